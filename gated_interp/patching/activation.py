"""Batched activation patching over layers × heads (× positions) and the residual stream.

`transformer_lens.patching` runs one full forward per patch. Here many patches share one
forward: the corrupted batch of n prompts is repeated k times, and one hook writes the clean
activation into copy i's head j (or position t). Each forward starts where its patches start
(`runner.run_from`): at the patched layer, from the corrupted run's state there, and, in
by-position sweeps, at the patched position, with the earlier positions' keys and values taken
from the corrupted run as a key-value cache. The metric is called on each copy's full
`[n, pos, d_vocab]` logits, the same input TransformerLens gives it, so results match
`transformer_lens.patching` (to float rounding) at a fraction of the work; `dry_run=True` says
how much (`planner.SweepPlan`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from jaxtyping import Float, Int
from torch import Tensor

from gated_interp._progress import progress_bar
from gated_interp.analysis.bootstrap import bootstrap_ci
from gated_interp.analysis.reductions import NOT_MEASURED
from gated_interp.cache import CacheLike
from gated_interp.devices import onloaded
from gated_interp.masks import Mask
from gated_interp.model import HookedGatedQwen3, ModelInput
from gated_interp.patching.metrics import Metric, metric_scalar
from gated_interp.patching.planner import DEFAULT_MAX_TOKENS, Chunk, SweepPlan, plan_sweep, tokens_per_forward
from gated_interp.patching.runner import CorruptedRun, copy_logits, corrupted_run, run_from
from gated_interp.patching.runs import token_batch
from gated_interp.patching.sites import RESID_ACTIVATIONS, Site, site

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "by_true_layer",
    "checked_clean",
    "patch_heads",
    "patch_resid",
    "result_dtype",
    "run_patch_chunk",
]

SweepResult = (
    Float[Tensor, "layer head"]
    | Float[Tensor, "layer head pos"]
    | Float[Tensor, "layer pos"]
    | tuple[Tensor, Tensor, Tensor]
    | SweepPlan
)


def patch_heads(
    model: HookedGatedQwen3,
    corrupted_tokens: ModelInput,
    clean_cache: CacheLike,
    metric: Metric,
    activation: str = "z",
    per_position: bool = False,
    batch_size: int | None = None,
    attention_mask: Mask[Tensor, "batch pos"] | None = None,
    progress: bool | None = None,
    n_boot: int = 0,
    ci: float = 0.95,
    seed: int = 0,
    memory_budget: int | None = None,
    dry_run: bool = False,
) -> Float[Tensor, "layer head"] | Float[Tensor, "layer head pos"] | tuple[Tensor, Tensor, Tensor] | SweepPlan:
    """Metric after patching each head's clean `activation` into the corrupted run.

    corrupted_tokens: token ids `[batch, pos]` (or `[pos]`), or strings, tokenised and padded
        as the model's forward does; left-padded ids without `attention_mask` get the mask the
        forward derives (`cfg.default_padding_side="left"`).
    activation: "z", "z_pre_gate", "gate_logits", "gate", "q", "k", "v" (`[batch, pos, head, ...]`;
        k and v index key-value heads) or "pattern" / "attn_scores" (`[batch, head, q_pos, k_pos]`,
        positions are destination positions). On a hybrid model also the Gated DeltaNet's
        "recurrent_out", "lin_gate", "lin_out", "lin_z", "lin_v", "beta", "decay" (value heads),
        "lin_q", "lin_k" (key heads); the result spans every layer, NaN rows on the layers without
        the activation (a hybrid's layers of the other type).
    per_position: patch one (head, position) at a time and return `[layer, head, pos]`; otherwise
        the head at all positions, `[layer, head]`. By position, each forward starts at its
        patches' position, reusing the corrupted run before it.
    batch_size: at most this many patches per forward (copies of the corrupted batch); by default
        as many as fill `DEFAULT_MAX_TOKENS` new tokens, fewer where `memory_budget` (bytes for
        one forward's activations, default `planner.DEFAULT_MEMORY_BUDGET`) would be exceeded.
    progress: a progress bar in copies (patches) done.
    dry_run: run nothing; return the `SweepPlan` (forwards, token-layers computed, against
        TransformerLens' loop); `print(plan)` says it in one line.

    `clean_cache` maps hook names to clean activations of the same `[batch, pos]` as the corrupted
    tokens (a `run_with_cache` cache or a plain dict). `metric(logits[batch, pos, d_vocab]) ->
    scalar` is called once per patch, on that patch's copy of the batch. Results are float32
    (float64 for a float64 model), whatever the model's dtype.

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
    tokens, mask = token_batch(model, corrupted_tokens, attention_mask)
    n_heads = _clean(clean_cache, where, where.layers[0]).shape[where.head_axis]
    axes = [where.layers, range(n_heads)]
    if per_position:
        axes.append(range(tokens.shape[-1]))
    options = SweepOptions(batch_size, progress, n_boot, ci, seed, memory_budget, dry_run)
    return _sweep(model, tokens, mask, clean_cache, metric, where, axes, options)


def patch_resid(
    model: HookedGatedQwen3,
    corrupted_tokens: ModelInput,
    clean_cache: CacheLike,
    metric: Metric,
    activation: str = "resid_pre",
    batch_size: int | None = None,
    attention_mask: Mask[Tensor, "batch pos"] | None = None,
    progress: bool | None = None,
    n_boot: int = 0,
    ci: float = 0.95,
    seed: int = 0,
    memory_budget: int | None = None,
    dry_run: bool = False,
) -> Float[Tensor, "layer pos"] | tuple[Tensor, Tensor, Tensor] | SweepPlan:
    """Metric after patching the clean residual stream at each (layer, position): `[layer, pos]`.

    activation: "resid_pre" (default, as `get_act_patch_resid_pre`), "resid_mid", "resid_post",
    "attn_out" or "mlp_out". Each forward starts at its patches' layer and position. Other
    arguments (`n_boot` intervals, `dry_run` too) as in `patch_heads`.
    """
    if activation not in RESID_ACTIVATIONS:
        raise ValueError(f"patch_resid patches {RESID_ACTIVATIONS}, got {activation!r}; use patch_heads for heads")
    where = site(model, activation)
    tokens, mask = token_batch(model, corrupted_tokens, attention_mask)
    axes = [where.layers, range(tokens.shape[-1])]
    options = SweepOptions(batch_size, progress, n_boot, ci, seed, memory_budget, dry_run)
    return _sweep(model, tokens, mask, clean_cache, metric, where, axes, options)


@dataclass(frozen=True)
class SweepOptions:
    """How `patch_heads` and `patch_resid` run their sweep (their shared keyword arguments)."""

    batch_size: int | None
    progress: bool | None
    n_boot: int
    ci: float
    seed: int
    memory_budget: int | None
    dry_run: bool


def _clean(clean_cache: CacheLike, where: Site, layer: int) -> Tensor:
    name = where.hook_name(layer)
    try:
        return clean_cache[name]
    except KeyError:
        raise KeyError(f"clean_cache has no {name!r}: run the clean prompts with run_with_cache") from None


def _sweep(
    model: HookedGatedQwen3,
    tokens: Int[Tensor, "n pos"],
    attention_mask: Mask[Tensor, "n pos"] | None,
    clean_cache: CacheLike,
    metric: Metric,
    where: Site,
    axes: list[Sequence[int]],
    options: SweepOptions,
) -> SweepResult:
    """Run every patch in the grid `axes` (layer first; position last when there is one), in the
    forwards `planner.plan_sweep` chooses; with `options.n_boot`, also the bootstrap interval of
    each patch's mean per-prompt metric."""
    n_boot = options.n_boot
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0 (0: no intervals), got {n_boot}")
    n_prompts, n_pos = tokens.shape
    clean = {layer: where.canonical(checked_clean(clean_cache, where, layer, tokens.shape)) for layer in axes[0]}
    per_position = where.head_axis is None or len(axes) == 3
    # A z patch changes layer `layer` only through W_O, so its copies start at resid_mid:
    # corrupted resid_mid + (z_clean - z_corrupted)[head] @ W_O[head], skipping a recomputation of
    # the layer's attention that would give every copy the same result.
    via_w_o = where.activation == "z"

    patches = torch.tensor(list(itertools.product(*axes)), dtype=torch.long)  # [n_patches, n_axes]
    max_tokens = tokens_per_forward(model, n_pos, options.memory_budget)
    plan = plan_sweep(
        patches,
        where.activation,
        (n_prompts, n_pos, model.cfg.n_layers),
        max_tokens,
        options.batch_size,
        per_position,
        first_block_share=0.5 if via_w_o else 1.0,
    )
    if options.dry_run:
        return plan

    run = corrupted_run(model, tokens, attention_mask)
    values = torch.empty(len(patches), dtype=result_dtype(model))
    per_prompt = torch.empty(len(patches), n_prompts, dtype=torch.float64) if n_boot else None
    bar = progress_bar(progress=options.progress, total=len(patches), desc=f"patching {where.activation}", unit="copy")
    for chunk in plan.chunks:
        if via_w_o:
            out = _run_z_chunk(model, run, where, clean[chunk.layer], patches[chunk.rows], chunk, metric, bool(n_boot))
        else:
            out = run_patch_chunk(model, run, clean, where, patches[chunk.rows], chunk, metric, bool(n_boot))
        if n_boot:
            values[chunk.rows], per_prompt[chunk.rows] = out[0].to(values.dtype), out[1]
        else:
            values[chunk.rows] = out.to(values.dtype)
        bar.update(len(chunk.rows))
    bar.close()
    shape = tuple(len(a) for a in axes)
    if not n_boot:
        return by_true_layer(values.reshape(shape), axes[0], model.cfg.n_layers)
    # [prompt, patch] → [patch]
    lo, hi = bootstrap_ci(per_prompt.T, n_boot=n_boot, ci=options.ci, seed=options.seed)
    return tuple(
        by_true_layer(x.to(values.dtype).reshape(shape), axes[0], model.cfg.n_layers) for x in (values, lo, hi)
    )


def by_true_layer(values: Tensor, layers: Sequence[int], n_layers: int) -> Tensor:
    """`values` (one row per layer of `layers`) as `[n_layers, ...]`: row l is layer l, NaN
    (`reductions.NOT_MEASURED`) on the layers without the activation (a hybrid model's layers of
    the other type), as the analyses lay out their `[layer, head]` tensors."""
    if list(layers) == list(range(n_layers)):
        return values
    out = values.new_full((n_layers, *values.shape[1:]), NOT_MEASURED)
    out[list(layers)] = values
    return out


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
def run_patch_chunk(
    model: HookedGatedQwen3,
    run: CorruptedRun,
    clean: dict[int, Tensor],
    where: Site,
    patches: Int[Tensor, "k n_axes"],
    chunk: Chunk,
    metric: Metric,
    per_prompt: bool = False,
) -> Float[Tensor, "k"] | tuple[Float[Tensor, "k"], Float[Tensor, "k n"]]:
    """One forward of k copies from block `chunk.layer` and position `chunk.start` on, copy i
    carrying patch `patches[i]` (rows `(layer, head?, pos?)`, position last when `chunk.start`
    is not 0); the metric of each copy (and, with `per_prompt`, of each prompt of each copy).
    `clean[layer]` is the clean activation in `where.canonical` order."""
    layer, start = chunk.layer, chunk.start
    k, n = len(patches), run.logits.shape[0]
    device = run.logits.device
    clean_index = patches[:, 1:].T.to(device)  # one row per patched axis: (head?, pos?)
    run_index = clean_index.clone()
    if start:  # the run holds positions start.. only
        run_index[-1] -= start
    hook = partial(
        _patch_hook,
        where=where,
        n=n,
        copies=torch.arange(k, device=device),
        run_index=run_index,
        clean=clean[layer][tuple(clean_index)],
    )
    residual = run.resid_pre[layer][:, start:].repeat(k, 1, 1)
    logits = run_from(model, run, layer, start, residual, [(where.hook_name(layer), hook)])
    return _copy_metrics(copy_logits(run, start, logits), metric, per_prompt)


@torch.no_grad()
def _run_z_chunk(
    model: HookedGatedQwen3,
    run: CorruptedRun,
    where: Site,
    clean_z: Float[Tensor, "head pos n d_head"],
    patches: Int[Tensor, "k n_axes"],
    chunk: Chunk,
    metric: Metric,
    per_prompt: bool = False,
) -> Float[Tensor, "k"] | tuple[Float[Tensor, "k"], Float[Tensor, "k n"]]:
    """`run_patch_chunk` for z patches: each copy starts at block `layer`'s resid_mid (positions
    `chunk.start`..), with the patched head's change written through W_O, then runs that block's
    MLP and the later blocks."""
    layer, start = chunk.layer, chunk.start
    resid_mid = run.resid_mid[layer][:, start:]
    k = len(patches)
    heads = patches[:, 1].to(resid_mid.device)
    corrupted_z = where.canonical(run.z[layer])
    delta = (clean_z[heads, start:] - corrupted_z[heads, start:]).to(resid_mid.dtype)  # [k, pos, n, d_head]
    if patches.shape[1] == 3:  # per position: only position patches[i, 2] of copy i changes
        keep = torch.zeros(k, delta.shape[1], dtype=delta.dtype, device=delta.device)
        keep[torch.arange(k), patches[:, 2].to(delta.device) - start] = 1
        delta = delta * keep[:, :, None, None]
    block = model.blocks[layer]
    with onloaded(block.attn):  # W_O's values also when a device map offloaded this block
        W_O = block.attn.W_O[heads]  # [k, d_head, d_model]
    mid = (resid_mid[None] + torch.einsum("kpnd,kdm->knpm", delta, W_O)).flatten(0, 1)  # [k * n, pos, d_model]
    post = mid + block.mlp(block.ln2(mid))
    logits = run_from(model, run, layer + 1, start, post)
    return _copy_metrics(copy_logits(run, start, logits), metric, per_prompt)


def _copy_metrics(
    copies_logits: Iterable[Tensor], metric: Metric, per_prompt: bool
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


def _patch_hook(
    act: Tensor, hook: object, where: Site, n: int, copies: Tensor, run_index: Tensor, clean: Tensor
) -> Tensor:
    """Write each copy's clean values (`clean[i]` for copy i) at its (head?, pos?) `run_index`,
    in place.

    Canonical views are `[k, head?, pos, n, ...]` (run) and `[head?, pos, n, ...]` (clean), so
    indexing the run with the copy and its patch's leading indices selects its `[n, ...]` block.
    """
    view = where.canonical(act.unflatten(0, (act.shape[0] // n, n)), batch_dims=2)
    view[(copies, *run_index)] = clean.to(act.dtype)
    return act


def result_dtype(model: HookedGatedQwen3) -> torch.dtype:
    """Dtype of patching results: float32 like TransformerLens, float64 for float64 models (exactness checks)."""
    return torch.float64 if model.cfg.dtype == torch.float64 else torch.float32
