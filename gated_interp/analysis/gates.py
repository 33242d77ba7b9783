"""Statistics of the attention-output gate scores (`hook_gate`, sigmoid of the gate logits).

`hook_gate` is `[batch, pos, head, gate]` with gate = 1 (headwise) or d_head (elementwise).
Everything here needs a gated model's cache and raises a `ValueError` on a baseline's.
Padding positions (`attention_mask == 0`) are left out.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from gated_interp.analysis._cache import get, real_positions, require_layers


def _gate(cache: Any, layer: int, attention_mask: Tensor | None, what: str) -> tuple[Tensor, Tensor]:
    """Gate scores `[batch, pos, head, gate]` (float32) and real positions `[batch, pos]`."""
    gate = get(cache, "gate", layer, what).float()
    return gate, real_positions(attention_mask, gate.shape[0], gate.shape[1], gate.device)


def gate_values(
    cache: Any, layer: int | None = None, attention_mask: Int[Tensor, "batch pos"] | None = None
) -> Float[Tensor, "n"]:
    """Every gate score of `layer` (all layers if None) at real positions, flat: `[n]`, ready
    for a histogram."""
    layers = require_layers(cache, "gate", "gate_values") if layer is None else [layer]
    values = []
    for each in layers:
        gate, real = _gate(cache, each, attention_mask, "gate_values")
        values.append(gate[real].flatten())
    return torch.cat(values)


def mean_gate_score(cache: Any, attention_mask: Int[Tensor, "batch pos"] | None = None) -> float:
    """The paper's mean gate score: over all layers, real positions, heads and gate elements."""
    return float(gate_values(cache, None, attention_mask).mean())


def mean_gate_by_head(
    cache: Any, attention_mask: Int[Tensor, "batch pos"] | None = None
) -> Float[Tensor, "layer head"]:
    """Mean gate score of each head (over real positions and gate elements): `[layer, head]`."""
    layers = require_layers(cache, "gate", "mean_gate_by_head")
    means = []
    for layer in layers:
        gate, real = _gate(cache, layer, attention_mask, "mean_gate_by_head")
        means.append(gate[real].mean(dim=(0, 2)))  # gate[real] is [n_real, head, gate]
    return torch.stack(means)


def gate_stats(cache: Any, attention_mask: Int[Tensor, "batch pos"] | None = None) -> pd.DataFrame:
    """One row per (layer, head), columns:

    layer, head; mean (mean gate score); frac_below_0.1, frac_below_0.5 (fraction of gate values,
    over real positions and elements); position_std (std over real positions of the head's
    element-mean gate, population std, averaged over sequences: how query-dependent the gate is;
    NaN when no sequence has two real tokens); gate_pos0 (mean gate at position 0); gate_other
    (mean gate over real positions >= 1, NaN for one-token sequences).
    """
    layers = require_layers(cache, "gate", "gate_stats")
    rows = []
    for layer in layers:
        gate, real = _gate(cache, layer, attention_mask, "gate_stats")
        values = gate[real]  # [n_real, head, gate]
        per_position = gate.mean(-1)  # [batch, pos, head]
        weights = real.float()[..., None]  # [batch, pos, 1]
        count = weights.sum(1)  # [batch, 1]
        mean_b = (per_position * weights).sum(1) / count.clamp(min=1)
        var_b = (((per_position - mean_b[:, None]) ** 2) * weights).sum(1) / count.clamp(min=1)
        has_two = count[:, 0] >= 2
        position_std = var_b.sqrt()[has_two].mean(0) if has_two.any() else torch.full_like(mean_b[0], float("nan"))
        rest = weights[:, 1:]
        gate_other = (per_position[:, 1:] * rest).sum((0, 1)) / rest.sum((0, 1)) if rest.sum() > 0 else None
        for head in range(gate.shape[2]):
            rows.append(
                {
                    "layer": layer,
                    "head": head,
                    "mean": float(values[:, head].mean()),
                    "frac_below_0.1": float((values[:, head] < 0.1).float().mean()),
                    "frac_below_0.5": float((values[:, head] < 0.5).float().mean()),
                    "position_std": float(position_std[head]),
                    "gate_pos0": float(per_position[:, 0, head].mean()),
                    "gate_other": float(gate_other[head]) if gate_other is not None else float("nan"),
                }
            )
    return pd.DataFrame(rows)
