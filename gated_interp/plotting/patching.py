"""Heatmaps of patching results: `[layer, head]` or `[layer, pos]` grids, diverging around 0."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
from jaxtyping import Float
from matplotlib.figure import Figure
from torch import Tensor


def patching_heatmap(
    result: Float[Tensor, "layer x"],
    x_labels: Sequence[str] | None = None,
    title: str = "Activation patching",
    x_axis: str | None = None,
    y_axis: str = "layer",
    colorbar_label: str = "metric",
    center: float = 0.0,
    cmap: str = "RdBu",
    annotate: bool = False,
    one_based_layers: bool = True,
    figsize: tuple[float, float] | None = None,
    ax: plt.Axes | None = None,
) -> Figure:
    """A labelled heatmap of a 2-D patching result; returns the Figure.

    result: `[layer, head]` or `[layer, pos]` (a `[layer, head, pos]` result: plot one head's
        slice, or sum over positions first).
    x_labels: tick labels for the columns, e.g. `model.to_str_tokens(prompt)` for positions; with
        them the x axis defaults to "position", else to "head".
    center: the value drawn white. Colour limits are symmetric around it, so the sign of an
        effect reads directly off the colour (RdBu: red below, blue above).
    annotate: write each cell's value in it (for small grids).
    one_based_layers: label rows 1..n_layers, as the other `gated_interp.plotting` figures and the
        paper do (row i is still `result[i]`); False labels them 0..n_layers-1 like the tensor.
    """
    values = result.detach().float().cpu()
    if values.ndim != 2:
        raise ValueError(f"patching_heatmap takes a 2-D [layer, head|pos] tensor, got shape {tuple(values.shape)}")
    n_rows, n_cols = values.shape
    if x_labels is not None and len(x_labels) != n_cols:
        raise ValueError(f"{len(x_labels)} x_labels for {n_cols} columns")
    if x_axis is None:
        x_axis = "position" if x_labels is not None else "head"

    if ax is None:
        width = figsize or (max(4.0, 0.45 * n_cols + 2.0), max(3.0, 0.4 * n_rows + 1.5))
        fig, ax = plt.subplots(figsize=width, constrained_layout=True)
    else:
        fig = ax.figure
    spread = float((values - center).abs().max()) or 1.0  # all-equal grids still get a valid scale
    image = ax.imshow(
        values.numpy(), cmap=cmap, vmin=center - spread, vmax=center + spread, aspect="auto", interpolation="nearest"
    )
    fig.colorbar(image, ax=ax, label=colorbar_label)

    ax.set_title(title)
    ax.set_xlabel(x_axis)
    ax.set_ylabel(f"{y_axis} (1-based)" if one_based_layers and y_axis == "layer" else y_axis)
    ax.set_yticks(range(n_rows), [str(i + 1 if one_based_layers else i) for i in range(n_rows)])
    ax.set_xticks(range(n_cols))
    if x_labels is not None:
        # Tokens often carry leading spaces or newlines; show them visibly, tagged by position.
        ax.set_xticklabels([f"{_visible(t)} ({i})" for i, t in enumerate(x_labels)], rotation=90)
    if annotate:
        for (row, col), value in zip(((r, c) for r in range(n_rows) for c in range(n_cols)), values.flatten()):
            ax.text(col, row, f"{value:.2g}", ha="center", va="center", fontsize=7)
    return fig


def _visible(token: str) -> str:
    """Newlines and tabs escaped so that each tick label stays on one line."""
    return token.replace("\n", "\\n").replace("\t", "\\t")
