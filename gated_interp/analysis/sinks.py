"""Attention sinks: how much attention goes to the first token (or any chosen key position).

Two measurements from a cache of `hook_pattern` (`[batch, head, q_pos, k_pos]` per layer):

- F-Attn (gated-attention paper, section 4.3): the attention weight that queries at positions
  >= 1 give to position 0, averaged. Query 0 is left out because it can only see position 0.
- Key importance and sink rate (Gu et al., ICLR 2025): the importance of key position k for a
  (layer, head) is its attention averaged over all queries i >= k; the sink rate is the fraction
  of (layer, head) pairs whose importance exceeds eps.

Padding is right-padding (position 0 is always a real token); padding queries and padding keys are
left out via `attention_mask [batch, pos]` (1 = real token).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from gated_interp.analysis._cache import get, real_positions, require_layers


def _patterns(cache: Any, what: str) -> list[Float[Tensor, "batch head q_pos k_pos"]]:
    """Every cached layer's pattern, in layer order (read one at a time: never stacked, so no
    second copy of all layers' patterns is made)."""
    return [get(cache, "pattern", layer, what) for layer in require_layers(cache, "pattern", what)]


def first_token_attention(
    cache: Any,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    per: Literal["head", "layer", "model"] = "head",
) -> Float[Tensor, "layer head"] | Float[Tensor, "layer"] | Float[Tensor, ""]:
    """Mean attention that real queries at positions >= 1 give to key position 0.

    Returns `[layer, head]` (`per="head"`), `[layer]` averaged over heads (`per="layer"`), or a
    0-d tensor averaged over layers and heads (`per="model"`, the paper's F-Attn). Every real query
    of every sequence counts once (a pooled mean over batch and positions). For long contexts,
    `analysis.streaming.first_token_attention(model, tokens)` gives the same without a cache.
    """
    if per not in ("head", "layer", "model"):
        raise ValueError(f"per must be 'head', 'layer' or 'model', got {per!r}")
    patterns = _patterns(cache, "first_token_attention")
    batch, _, n_q, n_k = patterns[0].shape
    if n_q < 2:
        raise ValueError("first_token_attention needs sequences of at least 2 tokens: query 0 only sees itself")
    queries = real_positions(attention_mask, batch, n_k, patterns[0].device)[:, n_k - n_q :][:, 1:].float()
    if queries.sum() == 0:
        raise ValueError("no real query at position >= 1: every sequence in the batch is a single token")
    # Attention of queries >= 1 to key 0, [batch, head, q_pos - 1], weighted by real queries.
    result = torch.stack([(p[..., 1:, 0].float() * queries[:, None, :]).sum(dim=(0, 2)) for p in patterns])
    result = result / queries.sum()
    if per == "head":
        return result
    if per == "layer":
        return result.mean(dim=1)
    return result.mean()


def first_token_attention_by_layer(
    cache: Any, attention_mask: Int[Tensor, "batch pos"] | None = None
) -> Float[Tensor, "layer"]:
    """`first_token_attention` averaged over heads: `[layer]`."""
    return first_token_attention(cache, attention_mask, per="layer")


def uniform_first_token_attention(seq_len: int) -> float:
    """`first_token_attention` of a head that attends uniformly over its causal window, on
    unpadded sequences of `seq_len` tokens: the level at which position 0 gets no special share.

    Query i sees i + 1 keys, so it gives 1 / (i + 1) to position 0; the mean over queries
    1 .. seq_len - 1 is (H(seq_len) - 1) / (seq_len - 1), with H the harmonic number. It falls
    with length (0.035 at 128 tokens, 0.020 at 256), which is why a sink is judged against it.
    """
    if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len < 2:
        raise ValueError(f"seq_len must be an int >= 2 (query 0 only sees itself), got {seq_len!r}")
    return sum(1.0 / (i + 1) for i in range(1, seq_len)) / (seq_len - 1)


def key_importance(
    cache: Any,
    key_position: int = 0,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    per_sequence: bool = False,
) -> Float[Tensor, "layer head"] | Float[Tensor, "batch layer head"]:
    """Gu et al.'s importance of `key_position`: its attention averaged over real queries i >= k.

    Returns `[layer, head]` averaged over sequences, or `[batch, layer, head]` with
    `per_sequence=True`. Sequences in which `key_position` is padding are NaN per sequence and
    left out of the average. `analysis.streaming.key_importance(model, tokens)` gives the same
    without a cache.
    """
    patterns = _patterns(cache, "key_importance")
    batch, _, n_q, n_k = patterns[0].shape
    if n_q != n_k:
        raise ValueError("key_importance needs a cache of a full forward pass (queries = keys), not a KV-cached step")
    if not 0 <= key_position < n_k:
        raise ValueError(f"key_position {key_position} is outside the cached sequence length {n_k}")
    real = real_positions(attention_mask, batch, n_k, patterns[0].device)
    queries = real[:, key_position:].float()  # [batch, q >= k]
    counts = queries.sum(dim=1)  # [batch]
    # Per layer: attention of queries >= k to key k, [batch, head, q >= k], averaged over real queries.
    per_seq = torch.stack(
        [
            (p[:, :, key_position:, key_position].float() * queries[:, None, :]).sum(-1) / counts.clamp(min=1)[:, None]
            for p in patterns
        ]
    )  # [layer, batch, head]
    # A sequence whose key position is padding has no importance for it.
    per_seq = per_seq.masked_fill(~real[:, key_position][None, :, None], float("nan"))
    per_seq = per_seq.permute(1, 0, 2)  # [batch, layer, head]
    if per_sequence:
        return per_seq
    if torch.isnan(per_seq[:, 0, 0]).all():
        raise ValueError(f"key position {key_position} is padding in every sequence of the batch")
    return per_seq.nanmean(dim=0)


def sink_rate(
    cache: Any,
    eps: float = 0.3,
    key_position: int = 0,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
) -> float:
    """Gu et al.'s sink rate: the fraction of (layer, head) pairs whose importance of
    `key_position` exceeds `eps`, computed per sequence and averaged over sequences (as they
    average the metric over their 100 sequences). Returns a float in [0, 1]."""
    per_seq = key_importance(cache, key_position, attention_mask, per_sequence=True)
    valid = ~torch.isnan(per_seq[:, 0, 0])
    if not valid.any():
        raise ValueError(f"key position {key_position} is padding in every sequence of the batch")
    rates = (per_seq[valid] > eps).float().mean(dim=(1, 2))
    return float(rates.mean())


def head_averaged_patterns(
    cache: Any,
    layers: list[int] | tuple[int, ...],
    batch_index: int = 0,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
) -> Float[Tensor, "layer q_pos k_pos"]:
    """Mean over heads of the attention pattern of sequence `batch_index`, for each of `layers`
    (0-based), cropped to that sequence's real tokens. Returns `[len(layers), n_real, n_real]`."""
    available = require_layers(cache, "pattern", "head_averaged_patterns")
    wrong = [layer for layer in layers if layer not in available]
    if wrong:
        raise ValueError(
            f"layers {wrong} are not in the cache (it has layers {available[0]}..{available[-1]}); "
            "layers are 0-based here (layer 28 of the paper's figure is index 27)"
        )
    maps = torch.stack(
        [get(cache, "pattern", layer, "head_averaged_patterns")[batch_index].float().mean(0) for layer in layers]
    )
    if attention_mask is not None:
        n_real = int(torch.as_tensor(attention_mask)[batch_index].sum())
        maps = maps[:, :n_real, :n_real]
    return maps
