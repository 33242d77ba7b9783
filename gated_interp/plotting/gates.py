"""Gate-score distributions (histograms) and per-head mean gates (layer x head heat map)."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from jaxtyping import Float
from matplotlib.figure import Figure
from torch import Tensor

from gated_interp.plotting._common import annotate_cells, thin_ticks, to_numpy, variant_style, with_data

ALL_LAYERS = "all"


def _nested(values: Mapping | pd.DataFrame) -> dict[str, dict[int | str, np.ndarray]]:
    """{variant: {layer or "all": values}} from any accepted input."""
    if isinstance(values, pd.DataFrame):
        needed = {"variant", "gate"}
        if not needed <= set(values.columns):
            raise ValueError(
                f"a gate DataFrame needs columns 'variant', 'gate' (and optionally 'layer'); got {list(values.columns)}"
            )
        layer_col = values["layer"] if "layer" in values.columns else pd.Series(ALL_LAYERS, index=values.index)
        out: dict[str, dict] = {}
        for (variant, layer), group in values.groupby([values["variant"], layer_col], sort=False):
            out.setdefault(variant, {})[layer] = group["gate"].to_numpy(dtype=float)
        return out
    return {
        variant: {k: to_numpy(v).ravel() for k, v in per.items()}
        if isinstance(per, Mapping)
        else {ALL_LAYERS: to_numpy(per).ravel()}
        for variant, per in values.items()
    }


def gate_histograms(
    values: Mapping[str, Mapping[int, Float[Tensor, "n"]] | Float[Tensor, "n"]] | pd.DataFrame,
    bins: int = 50,
    title: str = "Gate score distribution",
    log_count: bool = False,
    data: str | None = None,
) -> Figure:
    """Histograms of gate scores in [0, 1], one row per variant and one column per layer.

    `values`: `{variant: {layer (0-based): flat gate values}}` (from `gate_values(cache, layer)`),
    `{variant: flat values}` for all layers pooled, or a long DataFrame with columns variant, gate
    and optionally layer. Subplots are titled "{variant}, layer N" (0-based) or "{variant}, all layers";
    all share the x axis (0..1). Bars are densities (each panel's area is 1), so that panels compare
    whatever their number of scores: a headwise layer has one score per head and position, an
    elementwise layer `d_head` times as many. `data`: what
    the gates were measured on (e.g. "16 held-out windows of 128 tokens"), for the title.
    """
    nested = _nested(values)
    if not nested:
        raise ValueError("no gate values to plot: pass {variant: {layer: values}}")
    n_cols = max(len(per) for per in nested.values())
    fig, axes = plt.subplots(
        len(nested), n_cols, figsize=(3.2 * n_cols, 2.6 * len(nested) + 0.6), squeeze=False, sharex=True, sharey="row"
    )
    edges = np.linspace(0.0, 1.0, bins + 1)
    for row, (variant, per) in enumerate(nested.items()):
        for col, (layer, gates) in enumerate(per.items()):
            ax = axes[row, col]
            ax.hist(gates, bins=edges, density=True, color=variant_style(str(variant), row)["color"], log=log_count)
            where = "all layers" if layer == ALL_LAYERS else f"layer {int(layer)}"
            ax.set_title(f"{variant}, {where}")
            ax.set_xlabel("Gate score")
            ax.set_ylabel("Density")
        for ax in axes[row, len(per) :]:
            ax.set_visible(False)
    fig.suptitle(with_data(title, data))
    fig.tight_layout()
    return fig


def gate_heatmap(
    mean_gate: Float[Tensor, "layer head"],
    title: str = "Mean gate score per head",
    cmap: str = "viridis",
    data: str | None = None,
    annotate: bool | None = None,
) -> Figure:
    """Layer x head heat map of mean gate scores (`mean_gate_by_head`), sequential colour scale
    0..1, layers and heads 0-based (TransformerLens' L{l}H{h} naming). `annotate` writes each
    value in its cell (default: for grids of at most 64 cells); `data`: what the gates were
    measured on, for the title."""
    matrix = to_numpy(mean_gate)
    if matrix.ndim != 2:
        raise ValueError(f"expected a [layer, head] matrix, got shape {matrix.shape}")
    n_layers, n_heads = matrix.shape
    fig, ax = plt.subplots(figsize=(max(4.5, 0.45 * n_heads + 2.5), max(3.0, 0.3 * n_layers + 1.8)))
    image = ax.imshow(matrix, cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    thin_ticks(ax, "x", [str(h) for h in range(n_heads)])
    thin_ticks(ax, "y", [str(layer) for layer in range(n_layers)])
    ax.set_xlabel("Head")
    ax.set_ylabel("Layer")
    ax.set_title(with_data(title, data))
    if annotate if annotate is not None else matrix.size <= 64:
        annotate_cells(ax, matrix, image, fmt="{:.2f}")
    fig.colorbar(image, ax=ax, label="mean gate score")
    fig.tight_layout()
    return fig
