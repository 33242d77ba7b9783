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

On a hybrid model a linear-attention (Gated DeltaNet) layer carries no keys and values but a
`RecurrentState`: the delta rule's state and the convolution's last inputs. Positions before
`start` are unchanged at every layer, so the corrupted run's state after position `start - 1` is
exactly the state each copy would have there: `CorruptedRun.prefix_state` computes it once per
(layer, start), from the corrupted run's residual stream over those positions (each row its own,
left padding included), and every copy continues from a copy of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Float, Int
from torch import Tensor

from gated_interp.components import KVCacheEntry, RecurrentState
from gated_interp.hooks import hook_name, names_filter
from gated_interp.masks import Mask
from gated_interp.model import HookedGatedQwen3

# (hook name, hook function) pairs, as `run_with_hooks` takes them
FwdHooks = Sequence[tuple[str, Callable]]


@dataclass(frozen=True)
class CorruptedRun:
    """What every patched copy shares: the corrupted run's per-layer states and logits.

    `resid_pre`, `resid_mid`: one `[n, pos, d_model]` tensor per layer. `z`, `keys` (after q/k
    norm and rotary, as the cache keeps them) and `values`: one `[n, pos, ...]` tensor per
    full-attention layer, None on a linear-attention layer. `mask` is the 0/1 attention mask the
    full forward used (given or derived from leading pads), None when it ran unmasked."""

    logits: Float[Tensor, "n pos d_vocab"]
    mask: Int[Tensor, "n pos"] | None
    resid_pre: list[Tensor]
    resid_mid: list[Tensor]
    z: list[Tensor | None]
    keys: list[Tensor | None]
    values: list[Tensor | None]
    # (layer, start) -> the linear-attention layer's state after position start - 1 (`prefix_state`)
    _states: dict[tuple[int, int], RecurrentState] = field(default_factory=dict, repr=False, compare=False)

    @property
    def padding_mask(self) -> Int[Tensor, "n pos"] | None:
        """The mask a linear-attention layer zeroes padding with in the full forward (None: it
        zeroes nothing), as `HookedGatedQwen3.forward` decides it."""
        mask = self.mask
        if mask is None or mask.shape[1] < 2 or bool(mask.all()):
            return None
        return mask

    @torch.no_grad()
    def prefix_state(self, model: HookedGatedQwen3, layer: int, start: int) -> RecurrentState:
        """The Gated DeltaNet state of linear-attention layer `layer` after positions `..start - 1`
        of the corrupted run (`[n, ...]`): positions a patch at `start` or later leaves unchanged."""
        if (layer, start) not in self._states:
            block = model.blocks[layer]
            state = RecurrentState()
            padding = None if self.padding_mask is None else self.padding_mask[:, :start]
            block.linear_attn(block.ln1(self.resid_pre[layer][:, :start]), padding, state)
            self._states[(layer, start)] = state
        return self._states[(layer, start)]


@torch.no_grad()
def corrupted_run(
    model: HookedGatedQwen3, tokens: Int[Tensor, "n pos"], attention_mask: Mask[Tensor, "n pos"] | None
) -> CorruptedRun:
    """One unpatched forward of the corrupted tokens, keeping what the copies start from."""
    wanted = ("resid_pre", "resid_mid", "z", "rot_k", "v")
    logits, cache = model.run_with_cache(tokens, attention_mask=attention_mask, names_filter=names_filter(*wanted))
    # z, rot_k and v exist on full-attention layers only: None on a hybrid model's linear ones
    per_layer = [
        [cache.cache_dict.get(hook_name(name, layer)) for layer in range(model.cfg.n_layers)] for name in wanted
    ]
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
    padding = None if run.padding_mask is None else run.padding_mask[:, start:].repeat(k, 1)
    # Each layer's past, before the patch hooks go on (computing a prefix state must not fire them).
    pasts = [_past(model, run, block_layer, start, k) for block_layer in range(layer, model.cfg.n_layers)]
    with model.hooks(fwd_hooks=list(fwd_hooks)):
        for block_layer, past in zip(range(layer, model.cfg.n_layers), pasts):
            residual = model.blocks[block_layer](residual, cos, sin, mask_4d, past, padding)
        return model.unembed(model.ln_final(residual))


def _past(model: HookedGatedQwen3, run: CorruptedRun, layer: int, start: int, k: int) -> KVCacheEntry | RecurrentState:
    """Layer `layer`'s cache entry for k copies resuming at `start`: the corrupted run's keys and
    values of positions ..start - 1, or (linear attention) a fresh copy of its state there, which
    the block then advances in place."""
    if run.keys[layer] is not None:
        return KVCacheEntry(
            run.keys[layer][:, :start].repeat(k, 1, 1, 1), run.values[layer][:, :start].repeat(k, 1, 1, 1)
        )
    state = run.prefix_state(model, layer, start)
    return RecurrentState(state.conv.repeat(k, 1, 1), state.recurrent.repeat(k, 1, 1, 1), n_seen=start)


def copy_logits(
    run: CorruptedRun, start: int, suffix_logits: Float[Tensor, "batch pos d_vocab"]
) -> Iterator[Float[Tensor, "n pos d_vocab"]]:
    """Each copy's full logits `[n, pos, d_vocab]`: the corrupted run's before `start`, the
    copy's own from `start` on. One copy at a time, so that k copies never hold k full logit
    tensors at once."""
    n = run.logits.shape[0]
    for suffix in suffix_logits.unflatten(0, (-1, n)):
        yield suffix if start == 0 else torch.cat([run.logits[:, :start].to(suffix.dtype), suffix], dim=1)
