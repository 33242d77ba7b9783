"""The authors' demo figure: head-averaged attention maps of four layers in a 2x2 grid.

Compute the maps with `gated_interp.analysis.head_averaged_patterns(cache, layers)`; this module
only draws them. Layers are numbered from 0 everywhere, as in hook names and TransformerLens:
the paper's "Layer 1, 7, 21, 28" of the 28-layer models are layers 0, 6, 20, 27 here
(`PAPER_DEMO_LAYERS`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
from jaxtyping import Float
from matplotlib.figure import Figure
from torch import Tensor

from gated_interp.plotting._common import shared_scale, thin_ticks, to_numpy, token_labels, with_data

PAPER_DEMO_LAYERS = (0, 6, 20, 27)  # the paper's "Layer 1, 7, 21, 28" of the 28-layer models, 0-based


def demo_layers(n_layers: int, zero_based: bool = True) -> tuple[int, ...]:
    """Four 0-based layer indices to show: `PAPER_DEMO_LAYERS` (0, 6, 20, 27) for a 28-layer
    model, otherwise the same quarter points of the depth (e.g. 6 layers → 0, 1, 4, 5); every
    layer when there are at most four. `zero_based=False` returns the paper's 1-based numbers
    (1, 7, 21, 28), only for citing the paper; every figure and table here is 0-based."""
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    if n_layers <= 4:
        chosen = tuple(range(n_layers))
    else:
        quarter = max(2, int(n_layers / 4 + 0.5))
        three_quarters = min(n_layers - 1, max(quarter + 1, int(3 * n_layers / 4 + 0.5)))
        chosen = (0, quarter - 1, three_quarters - 1, n_layers - 1)
    return chosen if zero_based else tuple(layer + 1 for layer in chosen)


def attention_maps(
    patterns: Mapping[int, Float[Tensor, "q_pos k_pos"]] | Float[Tensor, "layer q_pos k_pos"],
    str_tokens: Sequence[str],
    layers: Sequence[int] | None = None,
    title: str | None = None,
    cmap: str = "viridis",
    ncols: int = 2,
    data: str | None = None,
) -> Figure:
    """Heat maps of head-averaged attention, one subplot per layer (2x2 for four), titled
    "layer N" (0-based), queries down and keys across, token labels on both axes (x rotated 90°,
    thinned when there are many), all on one colour scale (0 to the largest weight of any
    panel) with one colour bar.

    `patterns`: `{layer index: [q, k]}`, or a `[n, q, k]` tensor whose rows are the `layers`
    (default 0..n-1). `str_tokens`: one label per position. `data`: what was run, for the title
    (default: the prompt, from the tokens).
    """
    if isinstance(patterns, Mapping):
        layer_ids, maps = list(patterns), [to_numpy(m) for m in patterns.values()]
    else:
        maps = [to_numpy(m) for m in patterns]
        layer_ids = list(range(len(maps))) if layers is None else list(layers)
        if len(layer_ids) != len(maps):
            raise ValueError(f"got {len(maps)} maps but {len(layer_ids)} layer indices: give one index per map")
    if not maps:
        raise ValueError("no attention maps to draw")
    labels = token_labels(str_tokens)
    for layer, matrix in zip(layer_ids, maps):
        if matrix.ndim != 2 or matrix.shape != (len(labels), len(labels)):
            raise ValueError(
                f"layer {layer}: map of shape {matrix.shape} does not match {len(labels)} tokens; pass a "
                "[q, k] head-averaged map per layer (head_averaged_patterns, cropped with attention_mask)"
            )
    if data is None:
        data = f"prompt {''.join(str_tokens)!r} ({len(labels)} tokens, 1 sequence)"
    _, vmax, _, _ = shared_scale(maps)  # attention is >= 0: 0 .. the largest weight in any panel
    ncols = min(ncols, len(maps))
    nrows = math.ceil(len(maps) / ncols)
    size = min(12.0, max(4.0, 0.35 * len(labels) + 2))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols * 1.1, size * nrows + 0.8), squeeze=False)
    image = None
    for ax, layer, matrix in zip(axes.flat, layer_ids, maps):
        image = ax.imshow(matrix, cmap=cmap, vmin=0.0, vmax=vmax, aspect="equal")
        ax.set_title(f"layer {layer}")
        thin_ticks(ax, "x", labels, rotation=90)
        thin_ticks(ax, "y", labels)
        ax.set_xlabel("Key token")
        ax.set_ylabel("Query token")
    for ax in list(axes.flat)[len(maps) :]:
        ax.set_visible(False)
    fig.suptitle(with_data(title or "Head-averaged attention", data))
    fig.tight_layout(rect=(0, 0, 0.9, 0.94))
    colorbar_ax = fig.add_axes((0.92, 0.15, 0.02, 0.7))
    fig.colorbar(image, cax=colorbar_ax, label="attention (one scale for all panels)")
    return fig


def save_demo_figure(fig: Figure, out_dir: str | os.PathLike, variant: str, dpi: int = 150) -> Path:
    """Save as `{out_dir}/{variant}_selected_layer_attention_maps.png` (the authors' file name);
    returns the path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{variant}_selected_layer_attention_maps.png"
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path
