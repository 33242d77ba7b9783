"""Screen every head with AtP*, then patch only the top k exactly.

On a model too big to patch exhaustively, AtP* (one forward and backward per layer) ranks all
heads; exact batched activation patching then checks the k heads that matter most. The report
holds both numbers per head and the Spearman rank correlation between them over the verified heads.

    result = screen_and_verify(model, clean_tokens, corrupted_tokens, metric, top_k=8)
    result.table        # one row per head, AtP* rank first; exact effect for the top k
    result.spearman     # rank agreement of AtP* and |exact effect| over the verified heads
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from gated_interp._progress import progress_bar
from gated_interp.masks import Mask
from gated_interp.model import HookedGatedQwen3
from gated_interp.patching.activation import result_dtype, run_patch_chunk
from gated_interp.patching.atp_star import atp_star
from gated_interp.patching.metrics import Metric, metric_scalar
from gated_interp.patching.planner import DEFAULT_MAX_TOKENS, Chunk
from gated_interp.patching.runner import corrupted_run
from gated_interp.patching.runs import clean_run, token_batch
from gated_interp.patching.sites import site


@dataclass
class ScreenResult:
    """`table`: one row per node (`layer, head, label, atp_star, atp_rank, verified, exact_metric,
    exact_effect`), sorted by AtP* magnitude; `exact_effect = exact_metric - corrupted_metric`
    (NaN for unverified heads). `spearman`: Spearman rank correlation between `atp_star` and
    `|exact_effect|` over the verified heads (NaN if fewer than 2). `estimates`: the AtP*
    `[layer, head]` tensor."""

    table: pd.DataFrame
    spearman: float
    clean_metric: float
    corrupted_metric: float
    estimates: Float[Tensor, "layer head"]


def spearman(a: Tensor | pd.Series, b: Tensor | pd.Series) -> float:
    """Spearman rank correlation (Pearson correlation of average ranks, ties shared); NaN for < 2
    values or a constant input."""
    a, b = pd.Series(torch.as_tensor(a).tolist()), pd.Series(torch.as_tensor(b).tolist())
    if len(a) != len(b):
        raise ValueError(f"spearman needs two equally long inputs, got {len(a)} and {len(b)}")
    if len(a) < 2:
        return float("nan")
    return float(a.rank().corr(b.rank()))


def screen_and_verify(
    model: HookedGatedQwen3,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    metric: Metric,
    top_k: int = 10,
    activation: str = "z",
    attention_mask: Mask[Tensor, "batch pos"] | None = None,
    grad_drop: bool = True,
    batch_size: int | None = None,
    progress: bool | None = None,
) -> ScreenResult:
    """Rank every head by AtP* on `activation` ("z", "gate_logits", "q", or "k" for key-value
    heads; on a hybrid model also the Gated DeltaNet's "recurrent_out", "lin_gate" or "lin_out",
    ranking the linear-attention layers' value heads), then patch the `top_k` highest-ranked
    exactly (clean activation of that head at every position into the corrupted run, batched as `patch_heads`).

    `metric(logits[batch, pos, d_vocab]) -> scalar` as for every sweep; `batch_size` patches per
    forward (default as `patch_heads`). Returns a `ScreenResult`; `exact_metric` equals what
    `patch_heads(model, corrupted_tokens, clean_cache, metric, activation)` gives for that head.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    where = site(model, activation)
    estimates = atp_star(
        model, clean_tokens, corrupted_tokens, metric, [activation], attention_mask=attention_mask, grad_drop=grad_drop
    )[activation]
    n_heads = estimates.shape[1]
    flat = estimates.flatten()
    # On a hybrid model the rows of the other layer type are NaN (not measured): rank the rest.
    measured = (~torch.isnan(flat)).nonzero()[:, 0]
    order = measured[flat[measured].abs().argsort(descending=True)]
    top = order[: min(top_k, len(order))]
    patches = torch.stack([top // n_heads, top % n_heads], dim=1)  # [k, (layer, head)]

    tokens, corrupted_mask = token_batch(model, corrupted_tokens, attention_mask)
    names = {where.hook_name(layer) for layer in where.layers}
    clean_logits, clean_cache = clean_run(
        model, token_batch(model, clean_tokens, attention_mask)[0], names, attention_mask
    )
    run = corrupted_run(model, tokens, corrupted_mask)
    with torch.no_grad():
        clean_value = float(metric_scalar(metric(clean_logits)))
        corrupted_value = float(metric_scalar(metric(run.logits)))
    canonical = {layer: where.canonical(clean_cache[where.hook_name(layer)]) for layer in where.layers}
    if batch_size is None:
        batch_size = max(1, DEFAULT_MAX_TOKENS // tokens.numel())
    exact = torch.empty(len(patches), dtype=result_dtype(model))
    bar = progress_bar(progress=progress, total=len(patches), desc=f"verifying {activation}", unit="copy")
    for layer in patches[:, 0].unique().tolist():
        rows = (patches[:, 0] == layer).nonzero()[:, 0]
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            exact[chunk] = run_patch_chunk(
                model, run, canonical, where, patches[chunk], Chunk(layer, 0, chunk), metric
            ).to(exact.dtype)
            bar.update(len(chunk))
    bar.close()

    table = pd.DataFrame(
        {
            "layer": (order // n_heads).tolist(),
            "head": (order % n_heads).tolist(),
            "atp_star": flat[order].tolist(),
        }
    )
    table.insert(2, "label", [f"L{lay}H{h}" for lay, h in zip(table["layer"], table["head"])])
    table["atp_rank"] = range(1, len(table) + 1)
    table["verified"] = table.atp_rank <= len(patches)
    table["exact_metric"] = float("nan")
    table.loc[: len(patches) - 1, "exact_metric"] = exact.tolist()
    table["exact_effect"] = table.exact_metric - corrupted_value
    verified = table[table.verified]
    rho = spearman(torch.tensor(verified.atp_star.abs().to_list()), torch.tensor(verified.exact_effect.abs().to_list()))
    table.attrs.update(activation=activation, top_k=len(patches), grad_drop=grad_drop)
    return ScreenResult(table, rho, clean_value, corrupted_value, estimates)
