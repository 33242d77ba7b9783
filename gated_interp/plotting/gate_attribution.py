"""Top contributors to gate logits (from `analysis.gate_attribution` tables); computes nothing."""

from __future__ import annotations

import math
from collections.abc import Mapping

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

OPENS, CLOSES = "#2166ac", "#b2182b"  # blue raises the gate logit (opens), red lowers it (closes)


def gate_contributors(
    tables: pd.DataFrame | Mapping[str, pd.DataFrame],
    k: int = 8,
    data: str | None = None,
    ncols: int = 4,
) -> Figure:
    """One horizontal bar panel per head: its `k` largest contributions to the gate logit.

    `tables` is one `gate_attribution` table or `{title: table}` (e.g. `{"L2H1": table}`, 0-based
    as TransformerLens labels heads). Contributions are summed over the table's positions and gate
    elements (average the batch first, the default of `gate_attribution`). Blue bars open the gate
    (raise its logit), red bars close it. `data` names the prompts in the figure title.
    """
    if isinstance(tables, pd.DataFrame):
        attrs = tables.attrs
        tables = {f"L{attrs.get('layer', '?')}H{attrs.get('head', '?')}": tables}
    if not tables:
        raise ValueError("gate_contributors needs at least one gate_attribution table")
    n = len(tables)
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 0.32 * k * nrows + 1.2), squeeze=False)
    for ax, (title, table) in zip(axes.flat, tables.items()):
        total = table.groupby("component", sort=False)["contribution"].sum()
        top = total.loc[total.abs().sort_values(ascending=False).index[:k]][::-1]
        ax.barh(range(len(top)), top.values, color=[OPENS if v > 0 else CLOSES for v in top.values])
        ax.set_yticks(range(len(top)), top.index)
        ax.axvline(0, color="black", linewidth=0.6)
        ax.set_title(f"{title}: gate logit {total.sum():.2f}", fontsize=9)
        ax.set_xlabel("contribution to gate logit")
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    suptitle = "Top contributors to gate logits (blue opens, red closes)"
    fig.suptitle(suptitle + (f"\n{data}" if data else ""), fontsize=10)
    fig.tight_layout()
    return fig
