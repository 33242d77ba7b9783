"""Each measured quantity, defined once: one layer's activations → one value per sequence.

Every function here takes one layer's tensors and `real [batch, pos]` (True at real tokens; see
`_cache.real_positions`) and returns per-sequence values `[batch, ...]`: sums with their counts
where the quantity is a mean, so that pooling over any set of sequences (one batch, several
batches, a bootstrap resample) is one division, done by the `pool_*` functions at the end. The
cache-based functions (`sinks`, `gates`, `massive`, `quietness`) and the streaming loop
(`streaming.measure`) both call these, so the two paths cannot drift apart.

Everything is computed in float32 at least (float64 inputs stay float64).

On a hybrid model (Qwen3.5, Qwen3-Next) the attention quantities exist on its full-attention layers
only. Tables indexed by layer keep the model's own layer numbers: a `[.., layer, ..]` tensor has a
row per layer, NaN on the layers a quantity does not apply to (`NOT_MEASURED`), and every pooling
over layers below (`average_over`, the sink rate) runs over the measured layers only.
"""

from __future__ import annotations

from typing import Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

# Which token "first-token attention" (and `gate_pos0`) measures: each sequence's real token number
# FIRST_TOKEN. The one place that decides it. Tokens are counted over real tokens only, as the
# model counts its rotary positions (`cumsum(attention_mask) - 1`), so with right padding, left
# padding or a mask with holes, token number 0 is the sequence's first real token and every
# measurement equals the one the sequence gives alone. `key_position` (key importance, sink rate)
# counts the same way.
FIRST_TOKEN = 0
# Gate scores below these count as closed in `gate_below` (`gate_frac_below_0.1`, `..._0.5`).
GATE_THRESHOLDS = (0.1, 0.5)
# Why a pooled mean has nothing to average.
NO_LATER_QUERY = "no real query at position >= 1: every sequence in the batch is a single token"
NO_REAL_POSITION = "no real position in the batch: the attention_mask is all zeros"


# The fill of a layer row that a quantity does not apply to (a linear-attention layer's attention).
NOT_MEASURED = float("nan")


def measured_layers(values: Float[Tensor, "*seq layer head"]) -> Bool[Tensor, "layer"]:
    """The layers that hold a measurement: rows not entirely `NOT_MEASURED` (over sequences and heads)."""
    flat = values.reshape(-1, *values.shape[-2:])
    return ~torch.isnan(flat).all(-1).all(0)


def _wide(x: Tensor) -> Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


# ---- which position holds which token --------------------------------------------------------
def token_numbers(real: Bool[Tensor, "batch pos"]) -> Int[Tensor, "batch pos"]:
    """Each position's number among its sequence's real tokens (0, 1, ...: the model's rotary
    position there); meaningful at real positions only."""
    return real.long().cumsum(-1) - 1


def token_position(real: Bool[Tensor, "batch pos"], number: int) -> Int[Tensor, "batch"]:
    """Where each sequence's real token number `number` sits (`FIRST_TOKEN`: its first real
    token); -1 in sequences with no such token."""
    hit = real & (token_numbers(real) == number)
    return torch.where(hit.any(-1), hit.long().argmax(-1), -1)


def real_from(real: Bool[Tensor, "batch pos"], number: int) -> Bool[Tensor, "batch pos"]:
    """The real positions of token number `number` and every later real token."""
    return real & (token_numbers(real) >= number)


def weight_to_token(
    pattern: Float[Tensor, "batch head q_pos k_pos"], real: Bool[Tensor, "batch k_pos"], number: int
) -> Float[Tensor, "batch head q_pos"]:
    """Every query's attention weight to its sequence's real token number `number` (0 in
    sequences with no such token)."""
    at = token_position(real.to(pattern.device), number)
    index = at.clamp(min=0)[:, None, None, None].expand(*pattern.shape[:-1], 1)
    return pattern.gather(-1, index)[..., 0] * (at >= 0)[:, None, None]


# ---- first-token attention (the paper's F-Attn) ------------------------------------------------
def first_token_queries(real: Bool[Tensor, "batch k_pos"], n_queries: int | None = None) -> Float[Tensor, "batch"]:
    """How many real queries follow each sequence's first token (its first token only sees
    itself, so it is left out): among the last `n_queries` positions (all if None)."""
    later = real_from(real, FIRST_TOKEN + 1)
    return later[:, real.shape[-1] - (n_queries or real.shape[-1]) :].float().sum(-1)


def first_token_attention(
    to_first: Float[Tensor, "batch head q_pos"], real: Bool[Tensor, "batch k_pos"]
) -> Float[Tensor, "batch head"]:
    """Attention that the real queries after each sequence's first token give to it, summed per
    sequence.

    `to_first` is every query's attention weight to its sequence's first real token
    (`weight_to_token(pattern, real, FIRST_TOKEN)`); the queries are the last `q_pos` of the
    `k_pos` positions (all of them in a full forward pass). Divide the pooled sums by the pooled
    `first_token_queries` (`pool_mean`) for the mean."""
    n_q, n_k = to_first.shape[-1], real.shape[-1]
    queries = real_from(real, FIRST_TOKEN + 1)[:, n_k - n_q :].to(to_first.device)  # [batch, q_pos]
    return (_wide(to_first) * queries[:, None, :]).sum(-1)


# ---- key importance and sink rate (Gu et al.) --------------------------------------------------
def key_importance(
    to_key: Float[Tensor, "batch head pos"], real: Bool[Tensor, "batch pos"], key_position: int
) -> Float[Tensor, "batch head"]:
    """Gu et al.'s importance of real token number `key_position`: its attention averaged over
    each sequence's real queries from that token on (`to_key` = `weight_to_token(pattern, real,
    key_position)` from a full forward pass: queries = keys). NaN in sequences with no real token
    number `key_position`."""
    real = real.to(to_key.device)
    queries = real_from(real, key_position).float()  # [batch, pos]
    summed = (_wide(to_key) * queries[:, None]).sum(-1)
    importance = summed / queries.sum(-1).clamp(min=1)[:, None]
    return importance.masked_fill((token_position(real, key_position) < 0)[:, None], float("nan"))


def check_key_position(key_position: int) -> None:
    """A key position is a real token's number in its sequence: an int >= 0 (negative numbers
    would count from each sequence's end, which differs per sequence: refused)."""
    if isinstance(key_position, bool) or not isinstance(key_position, int) or key_position < 0:
        raise ValueError(
            f"key_position must be an int >= 0 (the real token's number from each sequence's first, "
            f"0-based), got {key_position!r}"
        )


def check_eps(eps: float) -> None:
    """Gu et al.'s threshold is an attention weight: a number strictly between 0 and 1 (0 or less
    counts every head, 1 or more none, NaN none: each a silently meaningless sink rate)."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
        raise ValueError(f"eps must be a number strictly between 0 and 1 (e.g. 0.3), got {eps!r}")


def _only_measured(importance: Float[Tensor, "seq layer head"]) -> Float[Tensor, "seq attn_layer head"]:
    """The layers that hold a measurement (all of them when none does: then no key is real)."""
    keep = measured_layers(importance)
    return importance[:, keep] if keep.any() else importance


def _real_key_sequences(importance: Float[Tensor, "seq layer head"], key_position: int) -> Bool[Tensor, "seq"]:
    valid = ~torch.isnan(_only_measured(importance)[:, 0, 0])
    if not valid.any():
        raise ValueError(
            f"no sequence has a real token number {key_position} (key_position counts real tokens from "
            "each sequence's first, 0-based): choose a smaller key_position or pass sequences that reach it"
        )
    return valid


def pool_key_importance(importance: Float[Tensor, "seq layer head"], key_position: int) -> Float[Tensor, "layer head"]:
    """Importance averaged over the sequences in which the key is a real token (NaN rows for the
    layers not measured stay NaN)."""
    return importance[_real_key_sequences(importance, key_position)].mean(0)


def pool_sink_rate(importance: Float[Tensor, "seq layer head"], eps: float, key_position: int) -> float:
    """Gu et al.'s sink rate: per sequence, the fraction of (layer, head) pairs whose importance
    exceeds `eps`, over the measured layers (a hybrid model's full-attention layers); averaged over
    the sequences in which the key is a real token."""
    valid = _real_key_sequences(importance, key_position)
    return float((_only_measured(importance)[valid] > eps).float().mean(dim=(1, 2)).mean())


# ---- residual stream (the paper's M-Act) -------------------------------------------------------
def max_abs_resid(resid: Float[Tensor, "batch pos d_model"], real: Bool[Tensor, "batch pos"]) -> Float[Tensor, "batch"]:
    """Largest |resid| value over each sequence's real positions (pool with `.max(0)`)."""
    magnitude = _wide(resid).abs().amax(-1).masked_fill(~real.to(resid.device), float("-inf"))
    return magnitude.amax(-1)


# ---- gate scores ------------------------------------------------------------------------------
def gate_positions(real: Bool[Tensor, "batch pos"], gate_width: int) -> Float[Tensor, "batch"]:
    """How many gate scores each head has per sequence: real positions x gate elements."""
    return real.float().sum(-1) * gate_width


def gate_sum(
    gate: Float[Tensor, "batch pos head gate"], real: Bool[Tensor, "batch pos"]
) -> Float[Tensor, "batch head"]:
    """Gate scores summed over real positions and gate elements (the mean gate's numerator)."""
    return (_wide(gate) * real.to(gate.device)[..., None, None]).sum(dim=(1, 3))


def gate_below(
    gate: Float[Tensor, "batch pos head gate"], real: Bool[Tensor, "batch pos"], threshold: float
) -> Float[Tensor, "batch head"]:
    """How many gate scores at real positions are below `threshold`."""
    return ((gate < threshold) & real.to(gate.device)[..., None, None]).sum(dim=(1, 3)).float()


def at_first_token(
    values: Float[Tensor, "batch pos head"], real: Bool[Tensor, "batch pos"]
) -> Float[Tensor, "batch head"]:
    """`values` at each sequence's first real token; NaN in sequences without a real token
    (pool with `.nanmean(0)`)."""
    at = token_position(real.to(values.device), FIRST_TOKEN)
    picked = values[torch.arange(values.shape[0], device=values.device), at.clamp(min=0)]
    return picked.masked_fill((at < 0)[:, None], float("nan"))


def gate_at_first(
    gate: Float[Tensor, "batch pos head gate"], real: Bool[Tensor, "batch pos"]
) -> Float[Tensor, "batch head"]:
    """Element-mean gate at each sequence's first real token (`gate_pos0`; NaN in sequences
    without one; pool with `.nanmean(0)`)."""
    return at_first_token(_wide(gate).mean(-1), real)


def gate_after_first(
    gate: Float[Tensor, "batch pos head gate"], real: Bool[Tensor, "batch pos"]
) -> Float[Tensor, "batch head"]:
    """Element-mean gate summed over the real positions after each sequence's first real token
    (`gate_other`'s numerator; its count is `first_token_queries`)."""
    later = real_from(real.to(gate.device), FIRST_TOKEN + 1)
    return (_wide(gate).mean(-1) * later[..., None]).sum(1)


def gate_position_std(
    gate: Float[Tensor, "batch pos head gate"], real: Bool[Tensor, "batch pos"]
) -> Float[Tensor, "batch head"]:
    """Population std over real positions of each head's element-mean gate: how query-dependent
    the gate is. NaN for sequences with fewer than two real tokens."""
    per_position = _wide(gate).mean(-1)  # [batch, pos, head]
    weights = real.to(gate.device).float()[..., None]  # [batch, pos, 1]
    count = weights.sum(1)  # [batch, 1]
    mean = (per_position * weights).sum(1) / count.clamp(min=1)
    var = (((per_position - mean[:, None]) ** 2) * weights).sum(1) / count.clamp(min=1)
    return var.sqrt().masked_fill(count < 2, float("nan"))


# ---- loss ------------------------------------------------------------------------------------
def predicted_tokens(real: Bool[Tensor, "batch pos"]) -> Float[Tensor, "batch"]:
    """How many next-token predictions `model.loss_fn(..., attention_mask)` counts per sequence:
    pairs of adjacent real tokens."""
    return (real[:, 1:] & real[:, :-1]).float().sum(-1)


# ---- pooling over sequences -------------------------------------------------------------------
def pool_mean(sums: Float[Tensor, "seq *rest"], counts: Float[Tensor, "seq"], if_empty: str) -> Float[Tensor, "*rest"]:
    """The pooled mean of per-sequence sums: every counted item of every sequence weighs the same
    (exactly what one batch of all these sequences gives). Raises `ValueError(if_empty)` when
    nothing is counted."""
    total = counts.sum()
    if total == 0:
        raise ValueError(if_empty)
    return sums.sum(0) / total


def average_over(
    by_head: Float[Tensor, "layer head"], per: Literal["head", "layer", "model"]
) -> Float[Tensor, "layer head"] | Float[Tensor, "layer"] | Float[Tensor, ""]:
    """`[layer, head]` as it is (`per="head"`), averaged over heads (`"layer"`: NaN for a layer not
    measured), or over heads and the measured layers (`"model"`)."""
    if per not in ("head", "layer", "model"):
        raise ValueError(f"per must be 'head', 'layer' or 'model', got {per!r}")
    if per == "model":
        return by_head[measured_layers(by_head)].mean()
    return by_head if per == "head" else by_head.mean(-1)
