"""What the linear-attention (Gated DeltaNet) layers of Qwen3.5 / Qwen3-Next do, per value head.

A Gated DeltaNet head keeps a state matrix S; at each position it decays S by `exp(g)` (`hook_decay`
holds g <= 0, the log-decay), writes the new key/value pair with strength `beta` (`hook_beta`), reads
it with the query, and multiplies the (normed) read-out by its output gate `silu(z)` (`hook_lin_gate`).
`linear_attention_stats` puts per head, over real positions:

- `decay`: the mean log-decay g per token;
- `half_life`: `ln 2 / -decay`, in tokens: how many steps halve what the state holds when the head
  decays at its mean rate (the half-life of the geometric-mean decay; inf for a head that never decays);
- `beta`: the mean write strength, in (0, 1);
- `gate_abs`: mean `|silu(z)|` over positions and value elements (silu lies in [-0.28, inf), 0 closes);
- `gate_frac_near_zero`: the fraction of `|silu(z)|` values below `NEAR_ZERO` (0.1).

There is deliberately no "first-token attention" for these layers: the delta rule mixes tokens
through a state that every write partly overwrites, with no normalised weight over keys, so no
number of the softmax layers' kind (a share of the attention that sums to one) exists to report.

With `n_boot > 0`, each column gains `<column>_lo` / `<column>_hi`: a percentile-bootstrap
interval over sequences (`analysis.bootstrap`, the same resampling as `compare_variants`).
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from gated_interp.analysis import reductions
from gated_interp.analysis._cache import get, real_positions, require_layers
from gated_interp.analysis.bootstrap import bootstrap_ci
from gated_interp.masks import Mask

__all__ = ["LINEAR_COLUMNS", "NEAR_ZERO", "linear_attention_stats"]

# |silu(z)| below this counts as a (nearly) closed output gate.
NEAR_ZERO = 0.1
LINEAR_COLUMNS = ("decay", "half_life", "beta", "gate_abs", "gate_frac_near_zero")
WHAT = "linear_attention_stats"


def _per_sequence(
    cache: Any, layer: int, attention_mask: Tensor | None
) -> Float[Tensor, "batch lin_v_head quantity sum_count"]:
    """One layer's per-sequence (sum, count) of decay, beta, |silu(z)| and the near-zero count."""
    decay = get(cache, "decay", layer, WHAT)  # [batch, pos, lin_v_head]
    beta = get(cache, "beta", layer, WHAT)
    gate = get(cache, "lin_gate", layer, WHAT).abs()  # [batch, pos, lin_v_head, d_lin_value]
    real = real_positions(attention_mask, decay.shape[0], decay.shape[1], decay.device)
    n_pos = reductions.gate_positions(real, 1)[:, None].expand(-1, decay.shape[-1])  # [batch, head]
    n_gate = reductions.gate_positions(real, gate.shape[-1])[:, None].expand_as(n_pos)
    sums = [
        reductions.gate_sum(decay[..., None], real),
        reductions.gate_sum(beta[..., None], real),
        reductions.gate_sum(gate, real),
        reductions.gate_below(gate, real, NEAR_ZERO),
    ]
    counts = [n_pos, n_pos, n_gate, n_gate]
    return torch.stack([torch.stack(sums, -1), torch.stack(counts, -1).to(sums[0].dtype)], -1).double().cpu()


def _pooled(
    values: Float[Tensor, "seq layer lin_v_head quantity sum_count"],
) -> Float[Tensor, "layer lin_v_head column"]:
    """Pooled means (every real position weighs the same) and the half-life they imply."""
    means = values[..., 0].sum(0) / values[..., 1].sum(0)  # [layer, head, 4]
    decay, beta, gate_abs, near_zero = means.unbind(-1)
    half_life = math.log(2) / -decay  # -0.0 decay gives inf: a head that never forgets
    return torch.stack([decay, half_life, beta, gate_abs, near_zero], -1)


def linear_attention_stats(
    cache: Any,
    attention_mask: Mask[Tensor, "batch pos"] | None = None,
    n_boot: int = 0,
    ci: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per (layer, head) of the linear-attention layers (their own 0-based layer indices;
    `head` is the Gated DeltaNet value head), columns `layer, head, layer_type` and
    `LINEAR_COLUMNS` (see the module text), pooled over the real positions of every sequence.

    Needs `hook_decay`, `hook_beta` and `hook_lin_gate` of those layers (a plain
    `model.run_with_cache(tokens, attention_mask=mask)` keeps them). A model without linear-attention
    layers has none: asking raises a `ValueError`. `n_boot > 0` adds `_lo`/`_hi` interval columns.
    """
    cfg = getattr(getattr(cache, "model", None), "cfg", None)
    if cfg is not None and not cfg.linear_attention_layers:
        raise ValueError(
            "linear_attention_stats measures Gated DeltaNet layers, and this model has none (every layer is "
            "full attention): use gate_stats / first_token_attention for its attention layers"
        )
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 0:
        raise ValueError(f"n_boot must be an int >= 0 (0: no intervals), got {n_boot!r}")
    layers = require_layers(cache, "decay", WHAT)
    values = torch.stack([_per_sequence(cache, layer, attention_mask) for layer in layers], 1)
    if bool((values[..., 0, 1].sum(0) == 0).any()):
        raise ValueError(reductions.NO_REAL_POSITION)
    table = _pooled(values)  # [layer, head, column]
    columns = {name: table[..., i] for i, name in enumerate(LINEAR_COLUMNS)}
    if n_boot:
        lo, hi = bootstrap_ci(values, _pooled, n_boot=n_boot, ci=ci, seed=seed)
        for i, name in enumerate(LINEAR_COLUMNS):
            columns[f"{name}_lo"], columns[f"{name}_hi"] = lo[..., i], hi[..., i]
    n_heads = table.shape[1]
    frame = pd.DataFrame(
        {
            "layer": [layer for layer in layers for _ in range(n_heads)],
            "head": [head for _ in layers for head in range(n_heads)],
            "layer_type": "linear_attention",
            **{name: value.flatten().numpy() for name, value in columns.items()},
        }
    )
    frame.attrs.update(near_zero=NEAR_ZERO)
    return frame
