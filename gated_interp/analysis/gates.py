"""Statistics of the attention-output gate scores (`hook_gate`, sigmoid of the gate logits).

`hook_gate` is `[batch, pos, head, gate]` with gate = 1 (headwise) or d_head (elementwise).
Everything here needs a gated model's cache and raises a `ValueError` on a baseline's.
Padding positions (`attention_mask == 0`, on either side or in holes) are left out.
On a hybrid model the sigmoid gate sits on the full-attention layers: tables have rows for those
layers (their own indices), `[layer, head]` tensors NaN rows for the linear-attention layers (whose
output gate `silu(z)` is `analysis.linear_attention`'s), and asking for a linear layer's gate raises.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from gated_interp.analysis import reductions
from gated_interp.analysis._cache import by_true_layer, get, per_layer, real_positions
from gated_interp.masks import Mask


def gate_values(
    cache: Any, layer: int | None = None, attention_mask: Mask[Tensor, "batch pos"] | None = None
) -> Float[Tensor, "n"]:
    """Every gate score of `layer` (all layers if None) at real positions, flat: `[n]`, ready
    for a histogram."""
    if layer is None:
        _, values = per_layer(
            cache, "gate", attention_mask, "gate_values", lambda gate, real: gate[real].float().flatten()
        )
        return torch.cat(values)
    gate = get(cache, "gate", layer, "gate_values")
    return gate[real_positions(attention_mask, gate.shape[0], gate.shape[1], gate.device)].float().flatten()


def _gate_sums(cache: Any, attention_mask: Tensor | None, what: str) -> tuple[list[int], list[tuple[Tensor, Tensor]]]:
    """Per layer: gate scores summed per sequence and head `[batch, head]`, and how many there are `[batch]`."""
    return per_layer(
        cache,
        "gate",
        attention_mask,
        what,
        lambda gate, real: (reductions.gate_sum(gate, real), reductions.gate_positions(real, gate.shape[-1])),
    )


def mean_gate_by_head(
    cache: Any, attention_mask: Mask[Tensor, "batch pos"] | None = None
) -> Float[Tensor, "layer head"]:
    """Mean gate score of each head (over real positions and gate elements): `[layer, head]` (NaN
    rows for a hybrid model's linear-attention layers)."""
    layers, sums = _gate_sums(cache, attention_mask, "mean_gate_by_head")
    pooled = [reductions.pool_mean(total, count, reductions.NO_REAL_POSITION) for total, count in sums]
    return by_true_layer(cache, layers, pooled)


def mean_gate_score(cache: Any, attention_mask: Mask[Tensor, "batch pos"] | None = None) -> float:
    """The paper's mean gate score (`mean_gate`): over all layers, real positions, heads and gate
    elements (every head has as many scores, so it is the mean of the per-head means); on a hybrid
    model, over its full-attention layers."""
    return float(reductions.average_over(mean_gate_by_head(cache, attention_mask), "model"))


def gate_stats(cache: Any, attention_mask: Mask[Tensor, "batch pos"] | None = None) -> pd.DataFrame:
    """One row per (layer, head), columns:

    layer, head; mean_gate (mean gate score); gate_frac_below_0.1, gate_frac_below_0.5 (fraction
    of gate values, over real positions and elements); position_std (std over real positions of
    the head's element-mean gate, population std, averaged over sequences: how query-dependent the
    gate is; NaN when no sequence has two real tokens); gate_pos0 (mean over sequences of the gate
    at each sequence's first real token, wherever padding puts it); gate_other (mean gate over the
    real positions after each sequence's first real token, NaN for one-token sequences).
    """

    def reduce(gate: Tensor, real: Tensor) -> dict[str, Tensor]:
        count = reductions.gate_positions(real, gate.shape[-1])
        later = reductions.first_token_queries(real)
        columns = {
            "mean_gate": reductions.pool_mean(reductions.gate_sum(gate, real), count, reductions.NO_REAL_POSITION)
        }
        for threshold in reductions.GATE_THRESHOLDS:
            below = reductions.gate_below(gate, real, threshold)
            columns[f"gate_frac_below_{threshold}"] = reductions.pool_mean(below, count, reductions.NO_REAL_POSITION)
        columns["position_std"] = reductions.gate_position_std(gate, real).nanmean(0)
        columns["gate_pos0"] = reductions.gate_at_first(gate, real).nanmean(0)
        after = reductions.gate_after_first(gate, real)
        columns["gate_other"] = (
            after.sum(0) / later.sum() if later.sum() > 0 else torch.full_like(after[0], float("nan"))
        )
        return columns

    layers, tables = per_layer(cache, "gate", attention_mask, "gate_stats", reduce)
    rows = [
        {"layer": layer, "head": head, **{name: float(values[head]) for name, values in columns.items()}}
        for layer, columns in zip(layers, tables)
        for head in range(len(columns["mean_gate"]))
    ]
    return pd.DataFrame(rows)
