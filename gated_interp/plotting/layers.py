"""Per-layer curves of several variants on one axis (first-token attention, M-Act, ...), and a
discrete layer colour bar for scatter plots coloured by layer."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.colors as mcolors
import matplotlib.pyplot as plt
import numpy as np
from jaxtyping import Float
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter
from torch import Tensor

from gated_interp.plotting._common import plain_number, to_numpy, variant_style, with_data


def plot_by_layer(
    values: Mapping[str, Float[Tensor, "layer"]],
    ylabel: str,
    title: str,
    log_scale: bool = False,
    data: str | None = None,
    errors: Mapping[str, tuple[Float[Tensor, "layer"], Float[Tensor, "layer"]]] | None = None,
    reference: tuple[float, str] | None = None,
) -> Figure:
    """One line per variant of a per-layer value `[layer]` (e.g. `first_token_attention_by_layer`
    or `max_abs_resid_by_layer`), layers 0-based on the x axis, the legend outside the axes.

    Each variant keeps one colour in every figure; a curve whose label extends a variant's name
    ("gate_headwise, gates = 1") takes that colour with a dashed line. `log_scale` draws the y axis
    logarithmic with plain-number ticks (0.1, 1, 10). `data`: what was measured (prompt or data
    set, number of sequences), for the title. `errors`: `{label: (low, high)}` per layer, drawn as
    error bars (e.g. bootstrap confidence intervals). `reference`: `(level, label)`, a dashed
    horizontal line for comparison, e.g. `(analysis.uniform_first_token_attention(seq_len),
    "uniform attention")`. On a linear axis, non-negative values are drawn from 0, so that the
    heights of two curves compare as their values do.
    """
    if not values:
        raise ValueError("no values to plot: pass {variant name: [layer] tensor}")
    fig, ax = plt.subplots(figsize=(8, 4))
    for index, (variant, series) in enumerate(values.items()):
        y = to_numpy(series)
        if y.ndim != 1:
            raise ValueError(f"{variant}: expected a [layer] vector, got shape {y.shape}; average over heads first")
        x = np.arange(len(y))
        style = variant_style(variant, index)
        ax.plot(x, y, marker="o", markersize=3, label=variant, **style)
        if errors is not None and variant in errors:
            low, high = (to_numpy(bound) for bound in errors[variant])
            ax.errorbar(x, y, yerr=np.stack([y - low, high - y]), fmt="none", ecolor=style["color"], capsize=3)
    if reference is not None:
        level, label = reference
        ax.axhline(level, color="0.4", linestyle="--", linewidth=1, label=label)
    # NaN marks a layer without the quantity (a hybrid model's linear-attention layers): not drawn, not counted
    lowest = min(float(np.nanmin(to_numpy(series), initial=np.inf)) for series in values.values())
    if errors:
        lowest = min([lowest] + [float(np.nanmin(to_numpy(low), initial=np.inf)) for low, _ in errors.values()])
    if not log_scale and lowest >= 0 and (reference is None or reference[0] >= 0):
        ax.set_ylim(bottom=0)
    ax.set_xlabel("Layer")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # layers are whole numbers
    ax.set_ylabel(ylabel)
    ax.set_title(with_data(title, data))
    if log_scale:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))  # enough ticks on a narrow range
        ax.yaxis.set_major_formatter(plain_number)
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def layer_colorbar(
    fig: Figure, ax: Axes, n_layers: int, cmap: str = "viridis"
) -> tuple[mcolors.Colormap, mcolors.Normalize]:
    """A discrete colour bar with one colour and one tick per (0-based) layer; returns the
    `(cmap, norm)` to pass to `ax.scatter(..., c=layer, cmap=cmap, norm=norm)`."""
    colormap = plt.get_cmap(cmap, n_layers)
    norm = mcolors.BoundaryNorm(np.arange(-0.5, n_layers + 0.5), n_layers)
    mappable = plt.cm.ScalarMappable(norm=norm, cmap=colormap)
    step = max(1, int(np.ceil(n_layers / 16)))
    fig.colorbar(mappable, ax=ax, ticks=range(0, n_layers, step), label="layer")
    return colormap, norm
