"""Side-by-side sink, activation and gate measurements of several model variants."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
from torch import Tensor

from gated_interp.analysis._inputs import Prompts
from gated_interp.analysis.streaming import QUANTITIES, measure
from gated_interp.masks import Mask

COLUMNS = QUANTITIES


def measure_variant(
    model: Any,
    prompts: Prompts,
    batch_size: int | None = 8,
    attention_mask: Mask[Tensor, "batch pos"] | None = None,
    eps: float = 0.3,
    progress: bool | None = None,
    desc: str = "",
) -> dict[str, float]:
    """First-token attention, sink rate, max |resid_post| (M-Act), mean gate score (NaN if
    ungated) and loss of one model on the prompts, pooled over batches exactly as one big batch
    would give them: `streaming.measure(...).summary()`, one row of `compare_variants`' table."""
    return measure(model, prompts, attention_mask, batch_size, eps, progress=progress, desc=desc).summary()


def compare_variants(
    models: Mapping[str, Any],
    prompts: Prompts,
    batch_size: int | None = 8,
    attention_mask: Mask[Tensor, "batch pos"] | None = None,
    eps: float = 0.3,
    progress: bool | None = None,
    n_boot: int = 0,
    ci: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Run every model on the same prompts (strings, right-padded per batch, or a `[batch, pos]`
    token tensor with an optional `attention_mask`).

    Returns a DataFrame indexed by variant name with columns first_token_attention (the paper's
    F-Attn: mean attention of real queries >= 1 to token 0), sink_rate (Gu et al., eps, key 0),
    max_abs_resid (the paper's M-Act: mean over layers of max |resid_post|), mean_gate (NaN for an
    ungated model) and loss (mean next-token loss, padding excluded).

    Families can sit side by side (the paper's variants, Qwen3.5 / Qwen3-Next hybrids): on a hybrid
    the attention columns are measured on its full-attention layers, max_abs_resid on every layer,
    and when any model is hybrid the table gains an `attention_layers` column naming the layers each
    row's attention columns were measured on ("all" for a model with attention in every layer).

    With `n_boot > 0`, each column gains `<column>_lo` and `<column>_hi`: a percentile-bootstrap
    `ci` interval over sequences (`n_boot` resamples, fixed by `seed`). Memory grows linearly
    with the context (see `analysis.streaming`).
    """
    if not models:
        raise ValueError("no models given: pass a dict {variant name: model}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 0:
        raise ValueError(f"n_boot must be an int >= 0 (0: no intervals), got {n_boot!r}")
    rows, layers_measured = {}, {}
    for name, model in models.items():
        full, n_layers = tuple(model.cfg.full_attention_layers), model.cfg.n_layers
        layers_measured[name] = "all" if len(full) == n_layers else ",".join(map(str, full))
        m = measure(model, prompts, attention_mask, batch_size, eps, progress=progress, desc=name)
        row = m.summary()
        if n_boot:
            for column, (lo, hi) in m.bootstrap(n_boot, ci, seed).items():
                row[f"{column}_lo"], row[f"{column}_hi"] = lo, hi
        rows[name] = row
    columns = list(COLUMNS)
    if n_boot:
        columns += [f"{column}_{end}" for column in COLUMNS for end in ("lo", "hi")]
    frame = pd.DataFrame.from_dict(rows, orient="index", columns=columns)
    if any(value != "all" for value in layers_measured.values()):
        frame["attention_layers"] = pd.Series(layers_measured)
    frame.index.name = "variant"
    return frame
