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
from dataclasses import dataclass
from functools import partial

import torch
from jaxtyping import Float, Int
from torch import Tensor

from gated_interp._progress import progress_bar
from gated_interp.analysis.bootstrap import bootstrap_ci
from gated_interp.cache import CacheLike
from gated_interp.hooks import hook_name, names_filter
from gated_interp.model import HookedGatedQwen3
from gated_interp.patching.metrics import Metric, metric_scalar
from gated_interp.patching.runs import token_batch
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
    progress: bool | None = None,
    n_boot: int = 0,
    ci: float = 0.95,
    seed: int = 0,
) -> Float[Tensor, "layer head"] | Float[Tensor, "layer head pos"] | tuple[Tensor, Tensor, Tensor]:
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

    n_boot: with `n_boot > 0`, returns `(values, lo, hi)`, three tensors of the same shape: `lo`
        and `hi` bound a percentile-bootstrap `ci` interval over prompts (`n_boot` resamples fixed
        by `seed`, one draw shared by every patch) of the mean per-prompt metric. Per-prompt values
        come from a metric that returns `[batch]`, or else from calling it on each prompt alone
        (`logits[i:i+1]`); `values` stays the metric of the whole copy, as without `n_boot`.
        `to_dataframe(values, axes, lo=lo, hi=hi)` makes the table with `value_lo`/`value_hi`.
    """
    where = site(model, activation)
    if where.head_axis is None:
        raise ValueError(f"{activation!r} has no heads: use patch_resid for residual-stream activations")
    n_heads = _clean(clean_cache, where, 0).shape[where.head_axis]
    axes = [range(model.cfg.n_layers), range(n_heads)]
    if per_position:
        axes.append(range(corrupted_tokens.shape[-1]))
    options = SweepOptions(batch_size, attention_mask, progress, n_boot, ci, seed)
    return _sweep(model, corrupted_tokens, clean_cache, metric, where, axes, options)


def patch_resid(
    model: HookedGatedQwen3,
    corrupted_tokens: Int[Tensor, "batch pos"],
    clean_cache: CacheLike,
    metric: Metric,
    activation: str = "resid_pre",
    batch_size: int | None = None,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    progress: bool | None = None,
    n_boot: int = 0,
    ci: float = 0.95,
    seed: int = 0,
) -> Float[Tensor, "layer pos"] | tuple[Tensor, Tensor, Tensor]:
    """Metric after patching the clean residual stream at each (layer, position): `[layer, pos]`.

    activation: "resid_pre" (default, as `get_act_patch_resid_pre`), "resid_mid", "resid_post",
    "attn_out" or "mlp_out". Other arguments (`n_boot` intervals too) as in `patch_heads`.
    """
    if activation not in RESID_ACTIVATIONS:
        raise ValueError(f"patch_resid patches {RESID_ACTIVATIONS}, got {activation!r}; use patch_heads for heads")
    where = site(model, activation)
    axes = [range(model.cfg.n_layers), range(corrupted_tokens.shape[-1])]
    options = SweepOptions(batch_size, attention_mask, progress, n_boot, ci, seed)
    return _sweep(model, corrupted_tokens, clean_cache, metric, where, axes, options)


@dataclass(frozen=True)
class SweepOptions:
    """How `patch_heads` and `patch_resid` run their sweep (their shared keyword arguments)."""

    batch_size: int | None
    attention_mask: Int[Tensor, "batch pos"] | None
    progress: bool | None
    n_boot: int
    ci: float
    seed: int


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
    options: SweepOptions,
) -> Float[Tensor, "..."] | tuple[Tensor, Tensor, Tensor]:
    """Run every patch in the grid `axes` (layer first), `options.batch_size` patches per forward;
    with `options.n_boot`, also the bootstrap interval of each patch's mean per-prompt metric."""
    batch_size, attention_mask, n_boot = options.batch_size, options.attention_mask, options.n_boot
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0 (0: no intervals), got {n_boot}")
    tokens = token_batch(model, corrupted_tokens)
    n_prompts, n_pos = tokens.shape
    clean = [where.canonical(checked_clean(clean_cache, where, layer, tokens.shape)) for layer in axes[0]]

    patches = torch.tensor(list(itertools.product(*axes)), dtype=torch.long)  # [n_patches, n_axes]
    if batch_size is None:
        batch_size = max(1, DEFAULT_MAX_TOKENS // (n_prompts * n_pos))
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    # Every copy is identical up to the patched layer: run that prefix once, then start each
    # forward at the patched layer. Chunks therefore never straddle two layers.
    # A z patch changes layer `layer` only through W_O, so its copies start at resid_mid:
    # corrupted resid_mid + (z_clean - z_corrupted)[head] @ W_O[head], skipping a recomputation of
    # the layer's attention that would give every copy the same result.
    via_w_o = where.activation == "z"
    if via_w_o:
        corrupted_resid, corrupted_mid, corrupted_z = _corrupted_states(model, tokens, attention_mask)
    else:
        corrupted_resid = corrupted_resid_pre(model, tokens, attention_mask)
    values = torch.empty(len(patches), dtype=result_dtype(model))
    per_prompt = torch.empty(len(patches), n_prompts, dtype=torch.float64) if n_boot else None
    bar = progress_bar(progress=options.progress, total=len(patches), desc=f"patching {where.activation}")
    for layer in axes[0]:
        in_layer = (patches[:, 0] == layer).nonzero()[:, 0]
        for start in range(0, len(in_layer), batch_size):
            rows = in_layer[start : start + batch_size]
            if via_w_o:
                out = _run_z_chunk(
                    model,
                    corrupted_mid[layer],
                    where.canonical(corrupted_z[layer]),
                    clean[layer],
                    attention_mask,
                    patches[rows],
                    metric,
                    layer,
                    bool(n_boot),
                )
            else:
                out = run_patch_chunk(
                    model,
                    corrupted_resid[layer],
                    attention_mask,
                    clean,
                    where,
                    patches[rows],
                    metric,
                    layer,
                    bool(n_boot),
                )
            if n_boot:
                values[rows], per_prompt[rows] = out[0].to(values.dtype), out[1]
            else:
                values[rows] = out
            bar.update(len(rows))
    bar.close()
    shape = tuple(len(a) for a in axes)
    if not n_boot:
        return values.reshape(shape)
    # [prompt, patch] → [patch]
    lo, hi = bootstrap_ci(per_prompt.T, n_boot=n_boot, ci=options.ci, seed=options.seed)
    return values.reshape(shape), lo.to(values.dtype).reshape(shape), hi.to(values.dtype).reshape(shape)


def checked_clean(clean_cache: CacheLike, where: Site, layer: int, shape: torch.Size) -> Tensor:
    """The clean activation of `where` at `layer`, checked to match the corrupted `[batch, pos]`."""
    act = _clean(clean_cache, where, layer)
    if act.shape[0] != shape[0] or act.shape[where.pos_axis] != shape[1]:
        raise ValueError(
            f"clean {where.hook_name(layer)} has shape {tuple(act.shape)}, which does not match the "
            f"corrupted tokens [batch={shape[0]}, pos={shape[1]}]; clean and corrupted prompts must "
            "have the same batch size and length"
        )
    return act


@torch.no_grad()
def _corrupted_states(
    model: HookedGatedQwen3, tokens: Int[Tensor, "n pos"], attention_mask: Int[Tensor, "n pos"] | None
) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """The corrupted run's resid_pre, resid_mid and z of each block (hooks off: the unpatched run)."""
    wanted = ("resid_pre", "resid_mid", "z")
    _, cache = model.run_with_cache(
        tokens, attention_mask=attention_mask, return_type=None, names_filter=names_filter(*wanted)
    )
    layers = range(model.cfg.n_layers)
    return tuple([cache[hook_name(name, layer)] for layer in layers] for name in wanted)


@torch.no_grad()
def corrupted_resid_pre(
    model: HookedGatedQwen3, tokens: Int[Tensor, "n pos"], attention_mask: Int[Tensor, "n pos"] | None
) -> list[Float[Tensor, "n pos d_model"]]:
    """The corrupted run's residual stream entering each block (hooks off: it is the unpatched run)."""
    _, cache = model.run_with_cache(
        tokens,
        attention_mask=attention_mask,
        return_type=None,
        names_filter=names_filter("resid_pre"),
    )
    return [cache[hook_name("resid_pre", layer)] for layer in range(model.cfg.n_layers)]


@torch.no_grad()
def run_patch_chunk(
    model: HookedGatedQwen3,
    resid_pre: Float[Tensor, "n pos d_model"],
    attention_mask: Int[Tensor, "n pos"] | None,
    clean: list[Tensor],
    where: Site,
    chunk: Int[Tensor, "k n_axes"],
    metric: Metric,
    layer: int,
    per_prompt: bool = False,
) -> Float[Tensor, "k"] | tuple[Float[Tensor, "k"], Float[Tensor, "k n"]]:
    """One forward of k copies from block `layer` on, copy i carrying patch `chunk[i]` (all in
    `layer`); the metric of each copy (and, with `per_prompt`, of each prompt of each copy)."""
    k, n = len(chunk), resid_pre.shape[0]
    hooks = []
    copies = torch.arange(k, device=resid_pre.device)
    index = chunk[:, 1:].T.to(resid_pre.device)  # one row per patched axis: (head?, pos?)
    hook = partial(_patch_hook, where=where, n=n, copies=copies, index=index, clean=clean[layer])
    hooks.append((where.hook_name(layer), hook))
    mask = None if attention_mask is None else attention_mask.repeat(k, 1)
    logits = model.run_with_hooks(resid_pre.repeat(k, 1, 1), start_at_layer=layer, attention_mask=mask, fwd_hooks=hooks)
    return _copy_metrics(logits.unflatten(0, (k, n)), metric, per_prompt)


@torch.no_grad()
def _run_z_chunk(
    model: HookedGatedQwen3,
    resid_mid: Float[Tensor, "n pos d_model"],
    corrupted_z: Float[Tensor, "head pos n d_head"],
    clean_z: Float[Tensor, "head pos n d_head"],
    attention_mask: Int[Tensor, "n pos"] | None,
    chunk: Int[Tensor, "k n_axes"],
    metric: Metric,
    layer: int,
    per_prompt: bool = False,
) -> Float[Tensor, "k"] | tuple[Float[Tensor, "k"], Float[Tensor, "k n"]]:
    """`run_patch_chunk` for z patches: each copy starts at block `layer`'s resid_mid, with the patched
    head's change written through W_O, then runs that block's MLP and the later blocks."""
    k, n = len(chunk), resid_mid.shape[0]
    heads = chunk[:, 1].to(resid_mid.device)
    delta = (clean_z[heads] - corrupted_z[heads]).to(resid_mid.dtype)  # [k, pos, n, d_head]
    if chunk.shape[1] == 3:  # per position: only position chunk[i, 2] of copy i changes
        keep = torch.zeros(k, delta.shape[1], dtype=delta.dtype, device=delta.device)
        keep[torch.arange(k), chunk[:, 2].to(delta.device)] = 1
        delta = delta * keep[:, :, None, None]
    block = model.blocks[layer]
    W_O = block.attn.W_O[heads]  # [k, d_head, d_model]
    mid = (resid_mid[None] + torch.einsum("kpnd,kdm->knpm", delta, W_O)).flatten(0, 1)  # [k * n, pos, d_model]
    post = mid + block.mlp(block.ln2(mid))
    mask = None if attention_mask is None else attention_mask.repeat(k, 1)
    logits = model(post, start_at_layer=layer + 1, attention_mask=mask)
    return _copy_metrics(logits.unflatten(0, (k, n)), metric, per_prompt)


def _copy_metrics(
    copies_logits: Float[Tensor, "k n pos d_vocab"], metric: Metric, per_prompt: bool
) -> Float[Tensor, "k"] | tuple[Float[Tensor, "k"], Float[Tensor, "k n"]]:
    """The metric of each copy (and, with `per_prompt`, of each prompt of each copy)."""
    if not per_prompt:
        return torch.stack([metric_scalar(metric(copy_logits)) for copy_logits in copies_logits]).cpu()
    whole, each = zip(*(_per_prompt(metric, copy_logits) for copy_logits in copies_logits))
    return torch.stack(whole).cpu(), torch.stack(each).cpu()


def _per_prompt(metric: Metric, logits: Float[Tensor, "n pos d_vocab"]) -> tuple[Tensor, Float[Tensor, "n"]]:
    """The metric of the copy (a scalar; the mean of per-prompt values if the metric gives
    `[n]`) and its `[n]` per-prompt values (from the metric, or one call per prompt)."""
    value = torch.as_tensor(metric(logits)).detach()
    n = logits.shape[0]
    if value.ndim == 1 and value.numel() == n:
        return value.mean(), value.double()
    whole = metric_scalar(value)
    try:
        each = torch.stack([metric_scalar(metric(logits[i : i + 1])).detach() for i in range(n)])
    except Exception as error:
        raise ValueError(
            "n_boot needs the metric per prompt, and calling it on one prompt (logits[i:i+1]) failed: "
            "return one value per prompt [batch] from the metric instead"
        ) from error
    return whole, each.double()


def _patch_hook(act: Tensor, hook: object, where: Site, n: int, copies: Tensor, index: Tensor, clean: Tensor) -> Tensor:
    """Write the clean values of each copy's (head, pos) into that copy, in place.

    Canonical views are `[k, head?, pos, n, ...]` (run) and `[head?, pos, n, ...]` (clean), so
    indexing both with the patch's leading indices selects matching `[..., n, ...]` blocks.
    """
    view = where.canonical(act.unflatten(0, (act.shape[0] // n, n)), batch_dims=2)
    view[(copies, *index)] = clean[tuple(index)].to(act.dtype)
    return act


def result_dtype(model: HookedGatedQwen3) -> torch.dtype:
    """Dtype of patching results: float32 like TransformerLens, float64 for float64 models (exactness checks)."""
    return torch.float64 if model.cfg.dtype == torch.float64 else torch.float32
