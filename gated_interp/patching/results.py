"""Labelled views of patching results: long-form pandas DataFrames."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pandas as pd
from torch import Tensor

# Axis names of the tensors the sweeps return, by shape kind.
HEAD_AXES = ("layer", "head")
HEAD_POS_AXES = ("layer", "head", "pos")
RESID_AXES = ("layer", "pos")


def to_dataframe(
    result: Tensor,
    axes: Sequence[str],
    position_labels: Sequence[str] | None = None,
    value_name: str = "value",
    lo: Tensor | None = None,
    hi: Tensor | None = None,
) -> pd.DataFrame:
    """One row per cell of `result` (e.g. `[layer, head]`), with integer axis columns.

    axes: the names of `result`'s axes, e.g. `("layer", "head")`, `("layer", "head", "pos")` or
        `("layer", "pos")` (see `HEAD_AXES`, `HEAD_POS_AXES`, `RESID_AXES`).
    position_labels: one string per position (e.g. `model.to_str_tokens(prompt)`); adds a
        `token` column next to `pos`.
    lo, hi: interval bounds of the same shape (e.g. from `patch_heads(..., n_boot=1000)`); add
        `{value_name}_lo` and `{value_name}_hi` columns.
    """
    axes = tuple(axes)
    if len(axes) != result.ndim:
        raise ValueError(
            f"result has {result.ndim} axes {tuple(result.shape)} but {len(axes)} names were given: {axes}"
        )
    rows = list(itertools.product(*(range(n) for n in result.shape)))
    df = pd.DataFrame(rows, columns=list(axes))
    if position_labels is not None:
        if "pos" not in axes:
            raise ValueError("position_labels given but result has no 'pos' axis")
        n_pos = result.shape[axes.index("pos")]
        if len(position_labels) != n_pos:
            raise ValueError(f"{len(position_labels)} position labels for {n_pos} positions")
        df.insert(axes.index("pos") + 1, "token", [position_labels[p] for p in df["pos"]])
    df[value_name] = result.detach().reshape(-1).cpu().double().numpy()
    for suffix, bound in (("lo", lo), ("hi", hi)):
        if bound is not None:
            if tuple(bound.shape) != tuple(result.shape):
                raise ValueError(
                    f"{suffix} has shape {tuple(bound.shape)}, result {tuple(result.shape)}: they must match"
                )
            df[f"{value_name}_{suffix}"] = bound.detach().reshape(-1).cpu().double().numpy()
    return df
