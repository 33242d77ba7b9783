"""Heatmaps of patching results: `[layer, head]` or `[layer, pos]` grids; several results side by
side on one shared colour scale."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
from jaxtyping import Float
from matplotlib.figure import Figure
from torch import Tensor

from gated_interp.plotting._common import annotate_cells, shared_scale, thin_ticks, to_numpy, token_labels, with_data


def patching_heatmap(
    result: Float[Tensor, "layer x"],
    x_labels: Sequence[str] | None = None,
    title: str = "Activation patching",
    x_axis: str | None = None,
    y_axis: str = "layer",
    colorbar_label: str = "metric",
    center: float = 0.0,
    cmap: str | None = None,
    annotate: bool = False,
    one_based_layers: bool = False,
    figsize: tuple[float, float] | None = None,
    ax: plt.Axes | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    data: str | None = None,
    colorbar: bool = True,
) -> Figure:
    """A labelled heatmap of a 2-D patching result; returns the Figure.

    result: `[layer, head]` or `[layer, pos]` (a `[layer, head, pos]` result: plot one head's
        slice, or sum over positions first). Rows are labelled 0..n_layers-1, as hook names and
        `L{layer}H{head}` count (`one_based_layers=True` labels them from 1).
    x_labels: tick labels for the columns, e.g. `model.to_str_tokens(prompt)` for positions; with
        them the x axis defaults to "position", else to "head".
    center: for signed data, the value drawn white, with colour limits symmetric around it
        (RdBu: red below, blue above); data all on one side of it get a sequential map instead.
    cmap, vmin, vmax: override the colour map and limits (e.g. one scale shared by several
        panels; `patching_heatmaps` does that for you).
    annotate: write each cell's value in it, in black or white for contrast (for small grids).
    data: what was patched (task, number of prompt pairs), for the title.
    """
    values = to_numpy(result)
    if values.ndim != 2:
        raise ValueError(f"patching_heatmap takes a 2-D [layer, head|pos] tensor, got shape {tuple(values.shape)}")
    n_rows, n_cols = values.shape
    if x_labels is not None and len(x_labels) != n_cols:
        raise ValueError(f"{len(x_labels)} x_labels for {n_cols} columns")
    if x_axis is None:
        x_axis = "position" if x_labels is not None else "head"

    if ax is None:
        width = figsize or (max(4.5, 0.45 * n_cols + 2.5), max(3.0, 0.4 * n_rows + 1.8))
        fig, ax = plt.subplots(figsize=width, constrained_layout=True)
    else:
        fig = ax.figure
    low, high, auto_cmap, _ = shared_scale([values], center)
    image = ax.imshow(
        values,
        cmap=cmap or auto_cmap,
        vmin=low if vmin is None else vmin,
        vmax=high if vmax is None else vmax,
        aspect="auto",
        interpolation="nearest",
    )
    if colorbar:
        fig.colorbar(image, ax=ax, label=colorbar_label)

    ax.set_title(with_data(title, data))
    ax.set_xlabel(x_axis)
    ax.set_ylabel(y_axis)
    thin_ticks(ax, "y", [str(i + 1 if one_based_layers else i) for i in range(n_rows)])
    if x_labels is not None:
        # Tokens often carry leading spaces or newlines; show them visibly, tagged by position.
        thin_ticks(ax, "x", [f"{t} ({i})" for i, t in enumerate(token_labels(x_labels))], rotation=90)
    else:
        thin_ticks(ax, "x", [str(i) for i in range(n_cols)])
    if annotate:
        annotate_cells(ax, values, image)
    return fig


def patching_heatmaps(
    results: Mapping[str, Float[Tensor, "layer x"]],
    title: str,
    colorbar_label: str = "metric",
    center: float = 0.0,
    annotate: bool | None = None,
    data: str | None = None,
    **kwargs,
) -> Figure:
    """Several patching results side by side (`{panel title: [layer, head|pos]}`), all on one
    colour scale with one colour bar, so that equal colours mean equal effects in every panel
    (a 0.01 effect stays pale next to a 0.7 one). Diverging around `center` when the results
    take both signs, sequential otherwise. `annotate` defaults to grids of at most 64 cells;
    other keyword arguments go to `patching_heatmap`."""
    if not results:
        raise ValueError("no patching results to plot: pass {panel title: [layer, head] tensor}")
    arrays = [to_numpy(r) for r in results.values()]
    low, high, cmap, _ = shared_scale(arrays, center)
    cmap = kwargs.pop("cmap", None) or cmap
    n_rows, n_cols = arrays[0].shape
    fig, axes = plt.subplots(
        1,
        len(arrays),
        figsize=(max(3.5, 0.45 * n_cols + 1.8) * len(arrays) + 1.2, max(3.0, 0.4 * n_rows + 2.0)),
        squeeze=False,
        constrained_layout=True,
    )
    for ax, (name, values) in zip(axes[0], results.items()):
        patching_heatmap(
            values,
            title=name,
            ax=ax,
            cmap=cmap,
            vmin=low,
            vmax=high,
            colorbar=False,
            annotate=to_numpy(values).size <= 64 if annotate is None else annotate,
            **kwargs,
        )
    fig.colorbar(axes[0, 0].images[0], ax=list(axes[0]), label=f"{colorbar_label} (one scale for all panels)")
    fig.suptitle(with_data(title, data))
    return fig
