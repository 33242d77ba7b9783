"""Shared helpers for the plots: tensors to numpy, token labels, colour scales, variant styles.

Conventions every figure follows: layers and heads are numbered from 0 (TransformerLens'
`L{layer}H{head}`), panels that are meant to be compared share one colour scale, a diverging
colour map centred on 0 is used only for signed data, and every figure names its data (prompt
or data set, number of sequences) in its title through the `data` argument.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import matplotlib.colors as mcolors
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.ticker import FuncFormatter

# One colour per variant in every figure; a variant's modified runs (e.g. "gate_headwise, gates
# opened") keep the colour and change the line style.
VARIANT_COLORS = {
    "baseline": "#1f77b4",
    "gate_headwise": "#d62728",
    "gate_elementwise": "#2ca02c",
    # the bundled Qwen3.5-layout pair (without entries here they took the colour cycle's red and purple,
    # the red being gate_headwise's)
    "hybrid_gated": "#9467bd",
    "hybrid_ungated": "#ff7f0e",
}
MODIFIED_LINESTYLES = ("--", ":", "-.")
DIVERGING_CMAP = "RdBu"
SEQUENTIAL_CMAP = "viridis"
MAX_TICK_LABELS = 24  # more tick labels than this are thinned to every k-th


def to_numpy(values: Any) -> np.ndarray:
    """A tensor (any device or dtype), array or list as a float numpy array."""
    if isinstance(values, torch.Tensor):
        return values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=float)


# Shown for each leading space of a token, so that word boundaries survive tick labels (which
# strip nothing, but a leading blank is invisible): ' gating' reads '·gating'.
SPACE_MARK = "\u00b7"


def token_labels(str_tokens: Sequence[str]) -> list[str]:
    """Tokens with newlines and tabs made visible, so each tick label stays on one line, and
    leading spaces marked with `SPACE_MARK`, so word boundaries show."""
    labels = []
    for t in str_tokens:
        stripped = t.lstrip(" ")
        labels.append(SPACE_MARK * (len(t) - len(stripped)) + stripped.replace("\n", "\\n").replace("\t", "\\t"))
    return labels


def with_data(title: str, data: str | None) -> str:
    """`title`, with the data it was measured on on a second line ("64 held-out windows ...")."""
    return f"{title}\n{data}" if data else title


def shared_scale(arrays: Iterable[Any], center: float = 0.0) -> tuple[float, float, str, bool]:
    """One colour scale for panels that are compared: `(vmin, vmax, cmap, diverging)`.

    Data on both sides of `center` get the diverging map, symmetric around `center` (so equal
    colours mean equal values in every panel and white means `center`); data on one side only get
    the sequential map from `center` to the extreme value, so that the darkest colour does not
    suggest a sign the data do not have.
    """
    values = np.concatenate([to_numpy(a).ravel() for a in arrays])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return center - 1.0, center + 1.0, DIVERGING_CMAP, True
    low, high = float(values.min()), float(values.max())
    if low < center < high:
        spread = max(center - low, high - center)
        return center - spread, center + spread, DIVERGING_CMAP, True
    if low >= center:  # all at or above center
        return center, high if high > center else center + 1.0, SEQUENTIAL_CMAP, False
    return low, center, SEQUENTIAL_CMAP, False  # all below center


def thin_ticks(ax: Axes, axis: str, labels: Sequence[str], max_labels: int = MAX_TICK_LABELS, **kwargs: Any) -> None:
    """Ticks at every position of `axis` ("x" or "y"), labelled; above `max_labels` only every
    k-th position keeps its tick and label, so the labels never overlap."""
    step = max(1, int(np.ceil(len(labels) / max_labels)))
    positions = list(range(0, len(labels), step))
    setter = ax.set_xticks if axis == "x" else ax.set_yticks
    setter(positions, [labels[i] for i in positions], **kwargs)


def text_color(cmap: Any, norm: mcolors.Normalize, value: float) -> str:
    """Black or white, whichever contrasts more with the cell colour of `value`."""
    red, green, blue, _ = mcolors.to_rgba(cmap(norm(value)))
    luminance = 0.2126 * red + 0.7152 * green + 0.0722 * blue
    return "black" if luminance > 0.5 else "white"


def annotate_cells(ax: Axes, matrix: np.ndarray, image: Any, fmt: str = "{:.2g}", fontsize: float = 7) -> None:
    """Write each cell's value in it, black on light cells and white on dark ones."""
    for (row, col), value in np.ndenumerate(matrix):
        color = text_color(image.cmap, image.norm, float(value))
        ax.text(col, row, fmt.format(value), ha="center", va="center", fontsize=fontsize, color=color)


def variant_style(label: str, index: int) -> dict[str, Any]:
    """Colour and line style of a curve: the colour of the variant the label starts with (its
    own colour cycle entry otherwise); a solid line for the variant itself, dashed for anything
    more in the label, e.g. "gate_headwise, gates opened"."""
    base = max((v for v in VARIANT_COLORS if label.startswith(v)), key=len, default=None)
    if base is None:
        return {"color": f"C{index % 10}", "linestyle": "-"}
    modified = label != base
    return {"color": VARIANT_COLORS[base], "linestyle": MODIFIED_LINESTYLES[0] if modified else "-"}


plain_number = FuncFormatter(lambda value, _: f"{value:g}")  # log-axis ticks as 0.1, 1, 10, 100
