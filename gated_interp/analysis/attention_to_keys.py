"""Attention weight of chosen keys without the `[q_pos, k_pos]` pattern, from queries and keys.

What lets `streaming.measure` reduce attention at any context length: the pattern of one layer is
`[batch, head, pos, pos]` (15 GB for one 2,048-token sequence through 28 layers), but the weight
of one key is `[batch, head, pos]`. Without padding or with right padding, the fused attention
kernel run over values that are one-hot at the key returns exactly that key's weight (O(pos)
memory); with left padding, `exp(score_ik - logsumexp_j score_ij)` with the log-sum-exp taken in
query chunks (`O(heads x chunk x pos)`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor

# Bytes of attention scores one query chunk may hold (the chunk size follows from it).
CHUNK_BYTES = 64 * 2**20


def attention_to_keys(
    q: Float[Tensor, "batch q_pos head d_head"],
    k: Float[Tensor, "batch k_pos kv_head d_head"],
    keys: list[int],
    key_real: Bool[Tensor, "batch k_pos"] | None = None,
    chunk_size: int | None = None,
) -> Float[Tensor, "key batch head q_pos"]:
    """Softmax attention weight that every query gives to each of `keys` (causal; padding keys
    hidden, as in the model), without materialising the `[q_pos, k_pos]` pattern. Float32; scores
    are `q . k / sqrt(d_head)`; query head j reads kv head `j // n_groups`.

    Without padding, or with right padding (every query that matters sees only real keys), the
    fused attention kernel does it: attention over values that are one-hot at the chosen keys
    returns exactly their weights, in O(pos) memory. Otherwise, or with `chunk_size` given, the
    weights are `exp(score - logsumexp(row))` with the log-sum-exp taken in query chunks
    (`[batch, head, chunk, pos]` scores at a time)."""
    right_padded = key_real is None or bool((key_real.long().cumprod(-1) == key_real.long()).all())
    if chunk_size is None and right_padded and len(keys) <= q.shape[-1]:
        return _attention_to_keys_fused(q, k, keys)
    return _attention_to_keys_chunked(q, k, keys, key_real, chunk_size)


def _attention_to_keys_fused(q: Tensor, k: Tensor, keys: list[int]) -> Tensor:
    batch, n, _, d_head = q.shape
    # Value width d_head keeps PyTorch on its fused (flash / memory-efficient) kernel.
    one_hot = q.new_zeros((batch, k.shape[2], n, d_head), dtype=torch.float32)
    for i, key in enumerate(keys):
        one_hot[:, :, key, i] = 1.0
    # Keys and values repeated per query head (small: O(pos)) rather than enable_gqa, which not
    # every fused kernel supports (a fallback to the math kernel would build the whole pattern).
    groups = q.shape[2] // k.shape[2]
    keys_per_head = k.float().transpose(1, 2).repeat_interleave(groups, dim=1)
    values = one_hot.repeat_interleave(groups, dim=1)
    out = F.scaled_dot_product_attention(
        q.float().transpose(1, 2), keys_per_head, values, is_causal=True
    )  # [batch, head, q_pos, d_head]
    return out[..., : len(keys)].permute(3, 0, 1, 2)


def _attention_to_keys_chunked(
    q: Tensor, k: Tensor, keys: list[int], key_real: Tensor | None, chunk_size: int | None
) -> Tensor:
    batch, n, n_heads, d_head = q.shape
    n_kv = k.shape[2]
    groups = n_heads // n_kv
    if chunk_size is None:
        chunk_size = max(1, min(n, CHUNK_BYTES // max(1, 4 * batch * n_heads * n)))
    q_grouped = q.float().permute(0, 2, 1, 3).unflatten(1, (n_kv, groups))  # [batch, kv, group, q_pos, d]
    k_grouped = k.float().permute(0, 2, 3, 1)[:, :, None]  # [batch, kv, 1, d, k_pos]
    key_at = torch.arange(n, device=q.device)
    out = q.new_empty((len(keys), batch, n_heads, n), dtype=torch.float32)
    scale = 1 / math.sqrt(d_head)
    for start in range(0, n, chunk_size):
        stop = min(n, start + chunk_size)
        # Causal: queries start..stop-1 see keys 0..stop-1 at most.
        scores = (q_grouped[:, :, :, start:stop] @ k_grouped[..., :stop]) * scale  # [b, kv, g, chunk, stop]
        visible = key_at[None, :stop] <= key_at[start:stop, None]  # [chunk, stop]
        if key_real is not None:
            # As the model: padding keys hidden, but a query always reads itself.
            own = key_at[None, :stop] == key_at[start:stop, None]
            visible = visible & (key_real[:, None, None, None, :stop].bool() | own)
        scores = scores.masked_fill(~visible, float("-inf"))
        lse = scores.logsumexp(-1)  # [b, kv, g, chunk]
        for i, key in enumerate(keys):
            weight = (scores[..., key] - lse).exp() if key < stop else torch.zeros_like(lse)
            out[i, :, :, start:stop] = weight.flatten(1, 2)
        del scores, lse
    return out
