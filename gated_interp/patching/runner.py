"""Running patched copies of the corrupted batch from a layer and a position on.

In a causal model, a patch at (layer l, position p) changes nothing below layer l, and nothing
before position p at any layer. So a patched copy needs only the blocks from l on, and only the
positions from p on: the keys and values of the earlier positions, at every layer, are the
corrupted run's, and go in as the key-value cache that `generate` uses (`KVCacheEntry`); the
logits of the earlier positions are the corrupted run's logits. `run_from` runs k copies of the
`n` prompts this way, from one start position `start` shared by the k copies.

Padding needs nothing special: the cached keys are each row's own, and each row's mask and rotary
positions are the full run's (`model._attention_mask_4d`, positions from the mask), so a
left-padded row, whose prefix differs from its neighbours', sees exactly what the full forward
shows it. Results equal a full forward of the patched copy to float rounding (tested against
`transformer_lens.patching`, which runs one).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from gated_interp.components import KVCacheEntry
from gated_interp.hooks import hook_name, names_filter
from gated_interp.masks import Mask
from gated_interp.model import HookedGatedQwen3

# (hook name, hook function) pairs, as `run_with_hooks` takes them
FwdHooks = Sequence[tuple[str, Callable]]


@dataclass(frozen=True)
class CorruptedRun:
    """What every patched copy shares: the corrupted run's per-layer states and logits.

    `resid_pre`, `resid_mid`, `z`, `keys` (after q/k norm and rotary, as the cache keeps them) and
    `values`: one `[n, pos, ...]` tensor per layer. `mask` is the 0/1 attention mask the full
    forward used (given or derived from leading pads), None when it ran unmasked."""

    logits: Float[Tensor, "n pos d_vocab"]
    mask: Int[Tensor, "n pos"] | None
    resid_pre: list[Tensor]
    resid_mid: list[Tensor]
    z: list[Tensor]
    keys: list[Tensor]
    values: list[Tensor]


@torch.no_grad()
def corrupted_run(
    model: HookedGatedQwen3, tokens: Int[Tensor, "n pos"], attention_mask: Mask[Tensor, "n pos"] | None
) -> CorruptedRun:
    """One unpatched forward of the corrupted tokens, keeping what the copies start from."""
    wanted = ("resid_pre", "resid_mid", "z", "rot_k", "v")
    logits, cache = model.run_with_cache(tokens, attention_mask=attention_mask, names_filter=names_filter(*wanted))
    per_layer = [[cache[hook_name(name, layer)] for layer in range(model.cfg.n_layers)] for name in wanted]
    return CorruptedRun(logits, attention_mask, *per_layer)


@torch.no_grad()
def run_from(
    model: HookedGatedQwen3,
    run: CorruptedRun,
    layer: int,
    start: int,
    residual: Float[Tensor, "batch pos d_model"],
    fwd_hooks: FwdHooks = (),
) -> Float[Tensor, "batch pos d_vocab"]:
    """Logits of positions `start`.. of k copies (`[k * n, pos - start, d_vocab]`), from
    `residual`, the stream entering block `layer` at those positions (`layer == n_layers`: the
    final norm and unembedding only). Positions before `start` read the corrupted run's keys and
    values; `fwd_hooks` see the suffix positions only (position p is row `p - start`)."""
    n = run.logits.shape[0]
    k = residual.shape[0] // n
    mask = None if run.mask is None else run.mask.repeat(k, 1)
    if start == 0:  # nothing to reuse along positions: the model's own forward from `layer`
        return model.run_with_hooks(residual, start_at_layer=layer, attention_mask=mask, fwd_hooks=list(fwd_hooks))
    n_pos = run.logits.shape[1]
    if mask is None:
        mask = torch.ones(k * n, n_pos, dtype=torch.long, device=residual.device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, start:]  # as the full forward numbers them
    mask_4d = model._attention_mask_4d(mask, n_pos - start)
    cos, sin = model.rotary(positions, residual.dtype)
    with model.hooks(fwd_hooks=list(fwd_hooks)):
        for block_layer in range(layer, model.cfg.n_layers):
            past = KVCacheEntry(
                run.keys[block_layer][:, :start].repeat(k, 1, 1, 1),
                run.values[block_layer][:, :start].repeat(k, 1, 1, 1),
            )
            residual = model.blocks[block_layer](residual, cos, sin, mask_4d, past)
        return model.unembed(model.ln_final(residual))


def copy_logits(
    run: CorruptedRun, start: int, suffix_logits: Float[Tensor, "batch pos d_vocab"]
) -> Iterator[Float[Tensor, "n pos d_vocab"]]:
    """Each copy's full logits `[n, pos, d_vocab]`: the corrupted run's before `start`, the
    copy's own from `start` on. One copy at a time, so that k copies never hold k full logit
    tensors at once."""
    n = run.logits.shape[0]
    for suffix in suffix_logits.unflatten(0, (-1, n)):
        yield suffix if start == 0 else torch.cat([run.logits[:, :start].to(suffix.dtype), suffix], dim=1)
