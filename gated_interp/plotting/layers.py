"""Per-layer curves of several variants on one axis (first-token attention, M-Act, ...)."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
from jaxtyping import Float
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch import Tensor

from gated_interp.plotting._common import to_numpy


def plot_by_layer(
    values: Mapping[str, Float[Tensor, "layer"]],
    ylabel: str,
    title: str,
    log_scale: bool = False,
) -> Figure:
    """One line per variant of a per-layer value `[layer]` (e.g. `first_token_attention_by_layer`
    or `max_abs_resid_by_layer`), layers shown 1-based on the x axis, with a legend."""
    if not values:
        raise ValueError("no values to plot: pass {variant name: [layer] tensor}")
    fig, ax = plt.subplots(figsize=(7, 4))
    for variant, series in values.items():
        y = to_numpy(series)
        if y.ndim != 1:
            raise ValueError(f"{variant}: expected a [layer] vector, got shape {y.shape}; average over heads first")
        ax.plot(np.arange(1, len(y) + 1), y, marker="o", markersize=3, label=variant)
    ax.set_xlabel("Layer")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # layers are whole numbers
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if log_scale:
        ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
