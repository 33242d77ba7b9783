"""Batched activation patching over layers × heads (× positions) and the residual stream.

`transformer_lens.patching` runs one forward pass per patch. Here many patches share one pass:
the corrupted batch of n prompts is repeated k times (`[k * n, pos]`), and one hook per layer
writes the clean activation into copy i's head j (or position t). The logits come back as
`[k, n, pos, d_vocab]` and the metric is called on each copy's `[n, pos, d_vocab]` slice — the
same input TransformerLens gives it — so results match `transformer_lens.patching` while a full
sweep costs a few forwards per layer instead of one per head.
"""

from __future__ import annotations

import itertools
from functools import partial

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from gated_interp.cache import CacheLike
from gated_interp.model import HookedGatedQwen3
from gated_interp.patching.metrics import Metric
from gated_interp.patching.sites import RESID_ACTIVATIONS, Site, site

# Default cap on tokens per patched forward (copies × prompts × positions): large enough to
# amortise per-forward overhead, small enough that the [tokens, d_vocab] logits of a real
# vocabulary (~150k) stay a few GB.
DEFAULT_MAX_TOKENS = 8192


def patch_heads(
    model: HookedGatedQwen3,
    corrupted_tokens: Int[Tensor, "batch pos"],
    clean_cache: CacheLike,
    metric: Metric,
    activation: str = "z",
    per_position: bool = False,
    batch_size: int | None = None,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    progress: bool = True,
) -> Float[Tensor, "layer head"] | Float[Tensor, "layer head pos"]:
    """Metric after patching each head's clean `activation` into the corrupted run.

    activation: "z", "z_pre_gate", "gate_logits", "gate", "q", "k", "v" (`[batch, pos, head, ...]`;
        k and v index key-value heads) or "pattern" / "attn_scores" (`[batch, head, q_pos, k_pos]`,
        positions are destination positions).
    per_position: patch one (head, position) at a time and return `[layer, head, pos]`; otherwise
        the head at all positions, `[layer, head]`.
    batch_size: patches per forward pass (copies of the corrupted batch); default fills
        `DEFAULT_MAX_TOKENS` tokens.

    `clean_cache` maps hook names to clean activations of the same `[batch, pos]` as
    `corrupted_tokens` (a `run_with_cache` cache or a plain dict). `metric(logits[batch, pos,
    d_vocab]) -> scalar` is called once per patch, on that patch's copy of the batch.
    """
    where = site(model, activation)
    if where.head_axis is None:
        raise ValueError(f"{activation!r} has no heads: use patch_resid for residual-stream activations")
    n_heads = _clean(clean_cache, where, 0).shape[where.head_axis]
    axes = [range(model.cfg.n_layers), range(n_heads)]
    if per_position:
        axes.append(range(corrupted_tokens.shape[-1]))
    return _sweep(model, corrupted_tokens, clean_cache, metric, where, axes, batch_size, attention_mask, progress)


def patch_resid(
    model: HookedGatedQwen3,
    corrupted_tokens: Int[Tensor, "batch pos"],
    clean_cache: CacheLike,
    metric: Metric,
    activation: str = "resid_pre",
    batch_size: int | None = None,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    progress: bool = True,
) -> Float[Tensor, "layer pos"]:
    """Metric after patching the clean residual stream at each (layer, position): `[layer, pos]`.

    activation: "resid_pre" (default, as `get_act_patch_resid_pre`), "resid_mid", "resid_post",
    "attn_out" or "mlp_out". Other arguments as in `patch_heads`.
    """
    if activation not in RESID_ACTIVATIONS:
        raise ValueError(f"patch_resid patches {RESID_ACTIVATIONS}, got {activation!r}; use patch_heads for heads")
    where = site(model, activation)
    axes = [range(model.cfg.n_layers), range(corrupted_tokens.shape[-1])]
    return _sweep(model, corrupted_tokens, clean_cache, metric, where, axes, batch_size, attention_mask, progress)


def _clean(clean_cache: CacheLike, where: Site, layer: int) -> Tensor:
    name = where.hook_name(layer)
    try:
        return clean_cache[name]
    except KeyError:
        raise KeyError(f"clean_cache has no {name!r}: run the clean prompts with run_with_cache") from None


def _sweep(
    model: HookedGatedQwen3,
    corrupted_tokens: Int[Tensor, "batch pos"],
    clean_cache: CacheLike,
    metric: Metric,
    where: Site,
    axes: list[range],
    batch_size: int | None,
    attention_mask: Int[Tensor, "batch pos"] | None,
    progress: bool,
) -> Float[Tensor, "..."]:
    """Run every patch in the grid `axes` (layer first), `batch_size` patches per forward."""
    tokens = torch.as_tensor(corrupted_tokens, device=model.cfg.device)
    if tokens.ndim == 1:
        tokens = tokens[None]
    n_prompts, n_pos = tokens.shape
    clean = [where.canonical(_checked_clean(clean_cache, where, layer, tokens.shape)) for layer in axes[0]]

    patches = torch.tensor(list(itertools.product(*axes)), dtype=torch.long)  # [n_patches, n_axes]
    if batch_size is None:
        batch_size = max(1, DEFAULT_MAX_TOKENS // (n_prompts * n_pos))
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    # Every copy is identical up to the patched layer: run that prefix once, then start each
    # forward at the patched layer. Chunks therefore never straddle two layers.
    corrupted_resid = _corrupted_resid_pre(model, tokens, attention_mask)
    values = torch.empty(len(patches), dtype=_result_dtype(model))
    bar = tqdm(total=len(patches), desc=f"patching {where.activation}", disable=not progress)
    for layer in axes[0]:
        in_layer = (patches[:, 0] == layer).nonzero()[:, 0]
        for start in range(0, len(in_layer), batch_size):
            rows = in_layer[start : start + batch_size]
            values[rows] = _run_chunk(
                model, corrupted_resid[layer], attention_mask, clean, where, patches[rows], metric, layer
            )
            bar.update(len(rows))
    bar.close()
    return values.reshape(*(len(a) for a in axes))


def _checked_clean(clean_cache: CacheLike, where: Site, layer: int, shape: torch.Size) -> Tensor:
    act = _clean(clean_cache, where, layer)
    if act.shape[0] != shape[0] or act.shape[where.pos_axis] != shape[1]:
        raise ValueError(
            f"clean {where.hook_name(layer)} has shape {tuple(act.shape)}, which does not match the "
            f"corrupted tokens [batch={shape[0]}, pos={shape[1]}]; clean and corrupted prompts must "
            "have the same batch size and length"
        )
    return act


@torch.no_grad()
def _corrupted_resid_pre(
    model: HookedGatedQwen3, tokens: Int[Tensor, "n pos"], attention_mask: Int[Tensor, "n pos"] | None
) -> list[Float[Tensor, "n pos d_model"]]:
    """The corrupted run's residual stream entering each block (hooks off: it is the unpatched run)."""
    _, cache = model.run_with_cache(
        tokens,
        attention_mask=attention_mask,
        return_type=None,
        names_filter=lambda name: name.endswith("hook_resid_pre"),
    )
    return [cache[f"blocks.{layer}.hook_resid_pre"] for layer in range(model.cfg.n_layers)]


@torch.no_grad()
def _run_chunk(
    model: HookedGatedQwen3,
    resid_pre: Float[Tensor, "n pos d_model"],
    attention_mask: Int[Tensor, "n pos"] | None,
    clean: list[Tensor],
    where: Site,
    chunk: Int[Tensor, "k n_axes"],
    metric: Metric,
    layer: int,
) -> Float[Tensor, "k"]:
    """One forward of k copies from block `layer` on, copy i carrying patch `chunk[i]` (all in
    `layer`); the metric of each copy."""
    k, n = len(chunk), resid_pre.shape[0]
    hooks = []
    copies = torch.arange(k, device=resid_pre.device)
    index = chunk[:, 1:].T.to(resid_pre.device)  # one row per patched axis: (head?, pos?)
    hook = partial(_patch_hook, where=where, n=n, copies=copies, index=index, clean=clean[layer])
    hooks.append((where.hook_name(layer), hook))
    mask = None if attention_mask is None else attention_mask.repeat(k, 1)
    logits = model.run_with_hooks(resid_pre.repeat(k, 1, 1), start_at_layer=layer, attention_mask=mask, fwd_hooks=hooks)
    return torch.stack([_scalar(metric(copy_logits)) for copy_logits in logits.unflatten(0, (k, n))]).cpu()


def _patch_hook(act: Tensor, hook: object, where: Site, n: int, copies: Tensor, index: Tensor, clean: Tensor) -> Tensor:
    """Write the clean values of each copy's (head, pos) into that copy, in place.

    Canonical views are `[k, head?, pos, n, ...]` (run) and `[head?, pos, n, ...]` (clean), so
    indexing both with the patch's leading indices selects matching `[..., n, ...]` blocks.
    """
    view = where.canonical(act.unflatten(0, (act.shape[0] // n, n)), batch_dims=2)
    view[(copies, *index)] = clean[tuple(index)].to(act.dtype)
    return act


def _result_dtype(model: HookedGatedQwen3) -> torch.dtype:
    # float32 like TransformerLens, but keep float64 models' precision (used by exactness checks).
    return torch.float64 if model.cfg.dtype == torch.float64 else torch.float32


def _scalar(value: Tensor | float) -> Tensor:
    value = torch.as_tensor(value)
    if value.numel() != 1:
        raise ValueError(
            f"the metric must return a scalar for the batch it is given, got shape {tuple(value.shape)}; "
            "average over prompts inside the metric (e.g. logit_diff does)"
        )
    return value.reshape(())
