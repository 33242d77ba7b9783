"""How heads go quiet: through an attention sink, through a closed gate, or not at all.

A head writes little into the residual stream either by attending to a sink (position 0) whose
value it barely writes out, or by closing its output gate. The paper's claim is that gates take
over the job sinks do in the ungated baseline; `head_quietness` puts the evidence for each head in
one row.

    _, cache = model.run_with_cache(tokens, attention_mask=mask)
    table = head_quietness(cache, mask)      # one row per (layer, head), with a "quiet" column

All averages run over the real queries after each sequence's first real token (which can only
attend to itself) and, for value norms, over the real keys after it; "the first token" is each
sequence's first real token wherever padding puts it (`reductions.FIRST_TOKEN`).
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from torch import Tensor

from gated_interp.analysis import reductions
from gated_interp.analysis._cache import get, real_positions
from gated_interp.masks import Mask

__all__ = ["QUIET_CLASSES", "head_quietness"]

QUIET_CLASSES = ("active", "sink", "gate", "sink+gate", "quiet (other)")


def _fetch(cache: Any, hook: str, layer: int) -> Tensor:
    return get(cache, hook, layer, "head_quietness").double()


def head_quietness(
    cache: Any,
    attention_mask: Mask[Tensor, "batch pos"] | None = None,
    quiet_below: float = 0.25,
    sink_attention: float = 0.5,
    sink_value: float = 0.5,
    closed_gate: float = 0.5,
    model: Any = None,
) -> pd.DataFrame:
    """One row per (layer, head): how much the head writes, and whether a sink or its gate quiets it.
    On a hybrid model, one row per head of its full-attention layers (their own layer indices).

    Columns (layers and heads 0-based, `label` as TransformerLens' `L{layer}H{head}`):
    - `first_token_attention`: mean attention of the later queries to the first token.
    - `value_norm_ratio`: `|v_0 W_O[h]|` (v at the first token) over the mean `|v_s W_O[h]|` of
      the later keys: the value
      the head would write from the sink, relative to an ordinary token's (sinks carry small values).
    - `gate_other`: mean gate score over queries >= 1 and gate elements (as in `gate_stats`);
      NaN for ungated models, which count as never closed.
    - `output_ratio`: mean `|z_t W_O[h]|` over queries t >= 1, relative to the mean `|v_s W_O[h]|`
      of keys s >= 1, i.e. to what the head writes when it copies one ordinary token through an
      open gate. The value norms are the head's own scale, independent of where it attends and of
      its gate; `output_ratio` near 0 means a quiet head.
    - `quiet`: "active" if `output_ratio >= quiet_below`; otherwise "sink" when
      `first_token_attention >= sink_attention` and `value_norm_ratio <= sink_value`, "gate" when
      `gate_other <= closed_gate`, "sink+gate" when both hold, "quiet (other)" when neither does.

    Needs `hook_pattern`, `hook_v`, `hook_z` (and `hook_gate` for gated models) of every layer, and
    the model's `W_O` (from `cache.model`, or `model=`). `attention_mask [batch, pos]` marks real
    tokens (padding on either side, or holes). A cache without its batch dimension
    (`remove_batch_dim=True`) counts as one sequence.
    """
    model = model if model is not None else getattr(cache, "model", None)
    if model is None:
        raise ValueError("head_quietness needs the model's W_O: pass a cache from model.run_with_cache or model=...")
    cfg = model.cfg
    rows = []
    for layer in cfg.full_attention_layers:  # a hybrid model's linear-attention layers have no heads of this kind
        pattern = _fetch(cache, "pattern", layer)  # [batch, head, q, k]
        batch, _, n_q, n_k = pattern.shape
        if n_q != n_k or n_q < 2:
            raise ValueError("head_quietness needs a full forward pass of at least 2 tokens (queries = keys)")
        real = real_positions(attention_mask, batch, n_k, pattern.device)
        later = reductions.real_from(real, reductions.FIRST_TOKEN + 1).double()  # [batch, pos]
        n_later = reductions.first_token_queries(real)  # [batch]
        if n_later.sum() == 0:
            raise ValueError(reductions.NO_LATER_QUERY)
        W_O = model.blocks[layer].attn.W_O.detach().double()  # [head, d_head, d_model]
        v = _fetch(cache, "v", layer).repeat_interleave(cfg.n_groups, dim=2)
        value_norm = torch.einsum("bphd,hdm->bphm", v, W_O).norm(dim=-1)  # [batch, pos, head]
        z = _fetch(cache, "z", layer)
        out_norm = torch.einsum("bphd,hdm->bphm", z, W_O).norm(dim=-1)  # [batch, pos, head]

        def over_later(x: Tensor, later: Tensor = later) -> Tensor:  # x [batch, pos, head] → [head]
            return (x * later[..., None]).sum(dim=(0, 1)) / later.sum()

        to_first = reductions.pool_mean(
            reductions.first_token_attention(reductions.weight_to_token(pattern, real, reductions.FIRST_TOKEN), real),
            n_later,
            reductions.NO_LATER_QUERY,
        )
        typical_value = over_later(value_norm)
        value_ratio = reductions.at_first_token(value_norm, real).nanmean(0) / typical_value
        output_ratio = over_later(out_norm) / typical_value
        if cfg.is_gated:
            gate = _fetch(cache, "gate", layer)  # [batch, pos, head, gate]
            gate_other = reductions.pool_mean(
                reductions.gate_after_first(gate, real), n_later, reductions.NO_LATER_QUERY
            )
        else:
            gate_other = torch.full((cfg.n_heads,), float("nan"), dtype=torch.float64)
        for head in range(cfg.n_heads):
            rows.append(
                {
                    "layer": layer,
                    "head": head,
                    "label": f"L{layer}H{head}",
                    "first_token_attention": to_first[head].item(),
                    "value_norm_ratio": value_ratio[head].item(),
                    "gate_other": gate_other[head].item(),
                    "output_ratio": output_ratio[head].item(),
                }
            )
    table = pd.DataFrame(rows)
    sink = (table.first_token_attention >= sink_attention) & (table.value_norm_ratio <= sink_value)
    closed = table.gate_other <= closed_gate  # False for NaN: an ungated head never closes
    quiet = table.output_ratio < quiet_below
    label = pd.Series("quiet (other)", index=table.index)
    label[sink & closed] = "sink+gate"
    label[sink & ~closed] = "sink"
    label[~sink & closed] = "gate"
    label[~quiet] = "active"
    table["quiet"] = pd.Categorical(label, categories=QUIET_CLASSES)
    table.attrs.update(
        quiet_below=quiet_below, sink_attention=sink_attention, sink_value=sink_value, closed_gate=closed_gate
    )
    return table
