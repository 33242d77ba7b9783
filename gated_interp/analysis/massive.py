"""Massive activations (Sun et al., 2024) in the residual stream after each block.

A massive activation is a hidden-state value whose magnitude exceeds `threshold` (100) and is at
least `ratio` (1000) times the median magnitude of its layer's hidden states. The gated-attention
paper's M-Act is the mean over layers of the largest |hidden state| value.

Padding positions (`attention_mask == 0`) are left out of maxima and medians.
"""

from __future__ import annotations

import warnings
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from gated_interp.analysis._cache import get, real_positions, require_layers


def _resid_post(
    cache: Any, layer: int, attention_mask: Tensor | None, what: str
) -> tuple[Float[Tensor, "batch pos d_model"], Tensor]:
    """`resid_post` of `layer` (signed, float32) and the real-position mask `[batch, pos]`."""
    resid = get(cache, "resid_post", layer, what).float()
    real = real_positions(attention_mask, resid.shape[0], resid.shape[1], resid.device)
    return resid, real


def max_abs_resid_by_layer(
    cache: Any, attention_mask: Int[Tensor, "batch pos"] | None = None
) -> Float[Tensor, "layer"]:
    """Largest |hidden state| value after each block, over real positions: `[layer]`."""
    layers = require_layers(cache, "resid_post", "max_abs_resid_by_layer")
    maxima = []
    for layer in layers:
        resid, real = _resid_post(cache, layer, attention_mask, "max_abs_resid_by_layer")
        maxima.append(resid.abs()[real].max())
    return torch.stack(maxima)


def max_abs_resid(cache: Any, attention_mask: Int[Tensor, "batch pos"] | None = None) -> float:
    """The paper's M-Act: the mean over layers of the largest |hidden state| value."""
    return float(max_abs_resid_by_layer(cache, attention_mask).mean())


def max_activation_by_layer(
    cache: Any, attention_mask: Int[Tensor, "batch pos"] | None = None
) -> Float[Tensor, "layer"]:
    """Deprecated name of `max_abs_resid_by_layer`."""
    warnings.warn("max_activation_by_layer is deprecated: use max_abs_resid_by_layer", DeprecationWarning, stacklevel=2)
    return max_abs_resid_by_layer(cache, attention_mask)


def m_act(cache: Any, attention_mask: Int[Tensor, "batch pos"] | None = None) -> float:
    """Deprecated name of `max_abs_resid` (the paper's M-Act)."""
    warnings.warn("m_act is deprecated: use max_abs_resid", DeprecationWarning, stacklevel=2)
    return max_abs_resid(cache, attention_mask)


def massive_activations(
    cache: Any,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    threshold: float = 100.0,
    ratio: float = 1000.0,
) -> pd.DataFrame:
    """One row per layer (resid_post of each block), columns:

    layer, max_abs, value (signed), batch, position, dim (where the largest |value| is),
    median_abs (median |value| over the layer's real hidden states), ratio (max_abs / median_abs),
    n_massive (how many values pass both criteria), massive (whether any does).
    """
    layers = require_layers(cache, "resid_post", "massive_activations")
    rows = []
    for layer in layers:
        resid, real = _resid_post(cache, layer, attention_mask, "massive_activations")
        magnitude = resid.abs().masked_fill(~real[..., None], float("-inf"))
        flat_index = int(magnitude.argmax())
        b, p, d = (int(i) for i in torch.unravel_index(torch.tensor(flat_index), magnitude.shape))
        max_abs = float(magnitude[b, p, d])
        median_abs = float(resid.abs()[real].median())
        passing = (magnitude > threshold) & (magnitude >= ratio * median_abs)
        rows.append(
            {
                "layer": layer,
                "max_abs": max_abs,
                "value": float(resid[b, p, d]),
                "batch": b,
                "position": p,
                "dim": d,
                "median_abs": median_abs,
                "ratio": max_abs / median_abs if median_abs > 0 else float("inf"),
                "n_massive": int(passing.sum()),
                "massive": bool(passing.any()),
            }
        )
    return pd.DataFrame(rows)
