"""Massive activations (Sun et al., 2024) in the residual stream after each block.

A massive activation is a hidden-state value whose magnitude exceeds `threshold` (100) and is at
least `ratio` (1000) times the median magnitude of its layer's hidden states. The gated-attention
paper's M-Act is the mean over layers of the largest |hidden state| value.

Padding positions (`attention_mask == 0`) are left out of maxima and medians.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from gated_interp.analysis import reductions
from gated_interp.analysis._cache import per_layer
from gated_interp.masks import Mask


def max_abs_resid_by_layer(
    cache: Any, attention_mask: Mask[Tensor, "batch pos"] | None = None
) -> Float[Tensor, "layer"]:
    """Largest |hidden state| value after each block, over real positions: `[layer]`."""
    _, maxima = per_layer(cache, "resid_post", attention_mask, "max_abs_resid_by_layer", reductions.max_abs_resid)
    return torch.stack(maxima).amax(-1)


def max_abs_resid(cache: Any, attention_mask: Mask[Tensor, "batch pos"] | None = None) -> float:
    """The paper's M-Act: the mean over layers of the largest |hidden state| value."""
    return float(max_abs_resid_by_layer(cache, attention_mask).mean())


def massive_activations(
    cache: Any,
    attention_mask: Mask[Tensor, "batch pos"] | None = None,
    threshold: float = 100.0,
    ratio: float = 1000.0,
) -> pd.DataFrame:
    """One row per layer (resid_post of each block), columns:

    layer, max_abs_resid (largest |value| over real positions), value (its sign kept), batch,
    position, dim (where it is), median_abs (median |value| over the layer's real hidden states),
    ratio (max_abs_resid / median_abs), n_massive (how many values pass both criteria), massive
    (whether any does).
    """

    def row(resid: Tensor, real: Tensor) -> dict[str, Any]:
        max_abs = float(reductions.max_abs_resid(resid, real).max())
        magnitude = resid.float().abs().masked_fill(~real[..., None], float("-inf"))
        b, p, d = (int(i) for i in torch.unravel_index(magnitude.argmax(), magnitude.shape))
        median_abs = float(resid.float().abs()[real].median())
        passing = (magnitude > threshold) & (magnitude >= ratio * median_abs)
        return {
            "max_abs_resid": max_abs,
            "value": float(resid[b, p, d]),
            "batch": b,
            "position": p,
            "dim": d,
            "median_abs": median_abs,
            "ratio": max_abs / median_abs if median_abs > 0 else float("inf"),
            "n_massive": int(passing.sum()),
            "massive": bool(passing.any()),
        }

    layers, rows = per_layer(cache, "resid_post", attention_mask, "massive_activations", row)
    return pd.DataFrame([{"layer": layer, **each} for layer, each in zip(layers, rows)])
