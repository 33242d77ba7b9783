"""Bars with bootstrap error bars for tables that carry `<column>_lo` / `<column>_hi` columns
(`analysis.ablation_effects(..., n_boot=...)`, `compare_variants(..., n_boot=...)`,
`patching.to_dataframe(values, axes, lo=lo, hi=hi)`); computes nothing."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure


def interval_bars(
    frame: pd.DataFrame,
    column: str = "delta_loss",
    labels: str | None = None,
    title: str | None = None,
    xlabel: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """One horizontal bar per row of `frame` with its `column` value, and an error bar from
    `{column}_lo` to `{column}_hi` where the table has them (bars without them when it has not).

    `labels`: a column holding the row labels (default: the index). `title` should name the data
    (prompts or data set, number of sequences) and the interval (e.g. "95% bootstrap CI").
    """
    if column not in frame.columns:
        raise KeyError(f"the table has no column {column!r}; it has {list(frame.columns)}")
    names = frame.index.astype(str) if labels is None else frame[labels].astype(str)
    values = frame[column].to_numpy(dtype=float)
    has_ci = f"{column}_lo" in frame.columns and f"{column}_hi" in frame.columns
    if has_ci:
        lo, hi = frame[f"{column}_lo"].to_numpy(dtype=float), frame[f"{column}_hi"].to_numpy(dtype=float)
        # percentile intervals need not contain the point estimate: clip the bar lengths at 0
        errors = np.stack([np.clip(values - lo, 0, None), np.clip(hi - values, 0, None)])
    else:
        errors = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 0.45 * len(values) + 1.2))
    else:
        fig = ax.figure
    positions = np.arange(len(values))[::-1]
    ax.barh(positions, values, xerr=errors, color="#4c72b0", ecolor="black", capsize=3)
    ax.set_yticks(positions, list(names))
    ax.axvline(0, color="black", linewidth=0.6)
    ax.set_xlabel(xlabel or column)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig
