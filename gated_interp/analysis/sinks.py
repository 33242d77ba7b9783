"""Attention sinks: how much attention goes to the first token (or any chosen key position).

Two measurements from a cache of `hook_pattern` (`[batch, head, q_pos, k_pos]` per layer):

- F-Attn (gated-attention paper, section 4.3): the attention weight that the queries after each
  sequence's first token give to that token, averaged. The first token's own query is left out
  because it can only see itself.
- Key importance and sink rate (Gu et al., ICLR 2025): the importance of key position k for a
  (layer, head) is its attention averaged over all queries i >= k; the sink rate is the fraction
  of (layer, head) pairs whose importance exceeds eps.

Positions count real tokens (`attention_mask [batch, pos]`, 1 = real token), as the model's own
positions do: "the first token" and "key position k" are each sequence's real tokens number 0 and
k, whether the batch is right-padded, left-padded or has holes, so a padded batch measures what
each sequence gives alone (`analysis.reductions.FIRST_TOKEN`). Padding queries and keys are left out.

On a hybrid model (Qwen3.5, Qwen3-Next) these are measured on its full-attention layers, the only
ones with an attention pattern: `[layer, head]` results keep a row per model layer, NaN on the
linear-attention layers, so that row l is layer l; the per-model averages and the sink rate run
over the full-attention layers (`model.cfg.full_attention_layers`).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from gated_interp.analysis import reductions
from gated_interp.analysis._cache import (
    by_true_layer,
    check_layer_type,
    get,
    model_cfg,
    per_layer,
    real_positions,
    require_layers,
)
from gated_interp.masks import Mask


def first_token_attention(
    cache: Any,
    attention_mask: Mask[Tensor, "batch pos"] | None = None,
    per: Literal["head", "layer", "model"] = "head",
) -> Float[Tensor, "layer head"] | Float[Tensor, "layer"] | Float[Tensor, ""]:
    """Mean attention that the real queries after each sequence's first real token give to it.

    Returns `[layer, head]` (`per="head"`), `[layer]` averaged over heads (`per="layer"`), or a
    0-d tensor averaged over layers and heads (`per="model"`, the paper's F-Attn). On a hybrid model,
    the rows of linear-attention layers are NaN and `per="model"` averages the full-attention
    layers. Every real query
    of every sequence counts once (a pooled mean over batch and positions). For long contexts,
    `analysis.streaming.first_token_attention(model, tokens)` gives the same without a cache.
    """
    if per not in ("head", "layer", "model"):
        raise ValueError(f"per must be 'head', 'layer' or 'model', got {per!r}")

    def reduce(pattern: Tensor, real: Tensor) -> tuple[Tensor, Tensor]:
        n_q, n_k = pattern.shape[-2:]
        if n_q < 2:
            raise ValueError("first_token_attention needs sequences of at least 2 tokens: query 0 only sees itself")
        to_first = reductions.weight_to_token(pattern, real, reductions.FIRST_TOKEN)  # [batch, head, q_pos]
        return reductions.first_token_attention(to_first, real), reductions.first_token_queries(real, n_q)

    layers, per_seq = per_layer(cache, "pattern", attention_mask, "first_token_attention", reduce)
    pooled = [reductions.pool_mean(sums, counts, reductions.NO_LATER_QUERY) for sums, counts in per_seq]
    result = by_true_layer(cache, layers, pooled)
    return reductions.average_over(result, per)


def first_token_attention_by_layer(
    cache: Any, attention_mask: Mask[Tensor, "batch pos"] | None = None
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
    attention_mask: Mask[Tensor, "batch pos"] | None = None,
    per_sequence: bool = False,
) -> Float[Tensor, "layer head"] | Float[Tensor, "batch layer head"]:
    """Gu et al.'s importance of `key_position`: its attention averaged over real queries i >= k.

    `key_position` counts each sequence's real tokens from its first (0-based), as the model's
    positions do, so padding on either side changes nothing. Returns `[layer, head]` averaged over
    sequences, or `[batch, layer, head]` with `per_sequence=True`. Sequences with no real token
    number `key_position` are NaN per sequence and left out of the average. On a hybrid model the
    linear-attention layers' rows are NaN.
    `analysis.streaming.key_importance(model, tokens)` gives the same without a cache.
    """
    reductions.check_key_position(key_position)

    def reduce(pattern: Tensor, real: Tensor) -> Tensor:
        n_q, n_k = pattern.shape[-2:]
        if n_q != n_k:
            raise ValueError(
                "key_importance needs a cache of a full forward pass (queries = keys), not a KV-cached step"
            )
        return reductions.key_importance(reductions.weight_to_token(pattern, real, key_position), real, key_position)

    layers, per_seq = per_layer(cache, "pattern", attention_mask, "key_importance", reduce)
    importance = by_true_layer(cache, layers, per_seq).transpose(0, 1)  # [batch, layer, head]
    return importance if per_sequence else reductions.pool_key_importance(importance, key_position)


def sink_rate(
    cache: Any,
    eps: float = 0.3,
    key_position: int = 0,
    attention_mask: Mask[Tensor, "batch pos"] | None = None,
) -> float:
    """Gu et al.'s sink rate: the fraction of (layer, head) pairs whose importance of
    `key_position` exceeds `eps`, computed per sequence and averaged over sequences (as they
    average the metric over their 100 sequences); on a hybrid model, the (layer, head) pairs of its
    full-attention layers. Returns a float in [0, 1]. `eps` is an attention
    weight strictly between 0 and 1 (anything else is refused: it would count every head or none)."""
    reductions.check_eps(eps)
    importance = key_importance(cache, key_position, attention_mask, per_sequence=True)
    return reductions.pool_sink_rate(importance, eps, key_position)


def head_averaged_patterns(
    cache: Any,
    layers: list[int] | tuple[int, ...],
    batch_index: int = 0,
    attention_mask: Mask[Tensor, "batch pos"] | None = None,
) -> Float[Tensor, "layer q_pos k_pos"]:
    """Mean over heads of the attention pattern of sequence `batch_index`, for each of `layers`
    (0-based), cropped to that sequence's real tokens wherever the mask puts them (left or right
    padding, holes): exactly the map the sequence gives alone. Returns
    `[len(layers), n_real, n_real]`."""
    available = require_layers(cache, "pattern", "head_averaged_patterns")
    for layer in layers:
        if isinstance(layer, int) and 0 <= layer < getattr(model_cfg(cache), "n_layers", 0):
            check_layer_type(model_cfg(cache), "pattern", layer, "head_averaged_patterns")
    wrong = [layer for layer in layers if layer not in available]
    if wrong:
        raise ValueError(
            f"layers {wrong} are not in the cache (it has layers {available[0]}..{available[-1]}); "
            "layers are 0-based here (layer 28 of the paper's figure is index 27)"
        )
    patterns = [get(cache, "pattern", layer, "head_averaged_patterns") for layer in layers]
    batch, n_pos = patterns[0].shape[0], patterns[0].shape[-1]
    if not -batch <= batch_index < batch:
        raise IndexError(f"batch_index {batch_index} is out of range: the cache holds {batch} sequences")
    maps = torch.stack([pattern[batch_index].float().mean(0) for pattern in patterns])
    if attention_mask is not None:
        keep = real_positions(attention_mask, batch, n_pos, maps.device)[batch_index]
        maps = maps[:, keep][:, :, keep]
    return maps
