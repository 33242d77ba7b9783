"""The authors' demo figure: head-averaged attention maps of four layers in a 2x2 grid.

Compute the maps with `gated_interp.analysis.head_averaged_patterns(cache, layers)`; this module
only draws them. Layers are 0-based in data and shown 1-based ("Layer 28" is index 27), as in
the paper.
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

from gated_interp.plotting._common import to_numpy, token_labels

PAPER_DEMO_LAYERS = (1, 7, 21, 28)  # 1-based, for the released 28-layer models


def demo_layers(n_layers: int, zero_based: bool = False) -> tuple[int, ...]:
    """Four layers to show, 1-based unless `zero_based`: the paper's (1, 7, 21, 28) for a 28-layer
    model; otherwise the same quarter points (1, n/4, 3n/4, n, rounded half up, kept distinct,
    e.g. 6 layers → 1, 2, 5, 6); all layers when there are at most four."""
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    if n_layers <= 4:
        chosen = tuple(range(1, n_layers + 1))
    else:
        quarter = max(2, int(n_layers / 4 + 0.5))
        three_quarters = min(n_layers - 1, max(quarter + 1, int(3 * n_layers / 4 + 0.5)))
        chosen = (1, quarter, three_quarters, n_layers)
    return tuple(layer - 1 for layer in chosen) if zero_based else chosen


def attention_maps(
    patterns: Mapping[int, Float[Tensor, "q_pos k_pos"]] | Float[Tensor, "layer q_pos k_pos"],
    str_tokens: Sequence[str],
    layers: Sequence[int] | None = None,
    title: str | None = None,
    cmap: str = "viridis",
    ncols: int = 2,
) -> Figure:
    """Heat maps of head-averaged attention, one subplot per layer (2x2 for four), titled
    "Layer N" (1-based), queries down and keys across, token labels on both axes (x rotated 90°),
    a colour bar each.

    `patterns`: `{layer index (0-based): [q, k]}`, or a `[n, q, k]` tensor whose rows are the
    0-based `layers` (default 0..n-1). `str_tokens`: one label per position.
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
    ncols = min(ncols, len(maps))
    nrows = math.ceil(len(maps) / ncols)
    size = max(4.0, 0.35 * len(labels) + 2)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols * 1.15, size * nrows), squeeze=False)
    for ax, layer, matrix in zip(axes.flat, layer_ids, maps):
        image = ax.imshow(matrix, cmap=cmap, vmin=0.0, vmax=max(float(matrix.max()), 1e-12), aspect="equal")
        ax.set_title(f"Layer {layer + 1}")
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=90)
        ax.set_yticks(range(len(labels)))
        ax.set_yticklabels(labels)
        ax.set_xlabel("Key token")
        ax.set_ylabel("Query token")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="attention")
    for ax in list(axes.flat)[len(maps) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    # Leave room above the subplot titles for the figure title.
    fig.tight_layout(rect=(0, 0, 1, 0.95) if title else None)
    return fig


def save_demo_figure(fig: Figure, out_dir: str | os.PathLike, variant: str, dpi: int = 150) -> Path:
    """Save as `{out_dir}/{variant}_selected_layer_attention_maps.png` (the authors' file name);
    returns the path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{variant}_selected_layer_attention_maps.png"
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path
