"""The released `q_proj` layout, de-interleaved into `W_Q`/`W_G` and interleaved back.

`q_proj`'s output (width `n_heads * (d_head + gate)`) is viewed per key-value group,
`[..., kv_head, group_width]`. Each group holds first the queries of its `n_groups` query heads
(head-major, `d_head` each), then that group's gate logits (head-major, `gate` each). Query head
`j` sits in group `j // n_groups`. This module is the only place that knows the layout.
"""

from __future__ import annotations

import einops
import torch
from jaxtyping import Float
from torch import Tensor

from gated_interp.config import GatedQwen3Config


def split_q_proj(
    weight: Float[Tensor, "d_q_proj d_model"], cfg: GatedQwen3Config
) -> tuple[Float[Tensor, "head d_model d_head"], Float[Tensor, "head d_model gate"] | None]:
    """HF `q_proj.weight` → (`W_Q`, `W_G`); `W_G` is None for an ungated model."""
    grouped = weight.reshape(cfg.n_key_value_heads, -1, weight.shape[-1])  # [kv, group_width, d_model]
    n_query_rows = cfg.n_groups * cfg.d_head
    W_Q = einops.rearrange(grouped[:, :n_query_rows], "kv (g d) m -> (kv g) m d", g=cfg.n_groups, d=cfg.d_head)
    if not cfg.is_gated:
        return W_Q, None
    W_G = einops.rearrange(grouped[:, n_query_rows:], "kv (g w) m -> (kv g) m w", g=cfg.n_groups, w=cfg.gate_width)
    return W_Q, W_G


def split_q_bias(
    bias: Float[Tensor, "d_q_proj"], cfg: GatedQwen3Config
) -> tuple[Float[Tensor, "head d_head"], Float[Tensor, "head gate"] | None]:
    """HF `q_proj.bias` → (`b_Q`, `b_G`): the same layout with a width of one."""
    W_Q, W_G = split_q_proj(bias[:, None], cfg)
    return W_Q[:, 0], (None if W_G is None else W_G[:, 0])


def merge_q_proj(
    W_Q: Float[Tensor, "head d_model d_head"], W_G: Float[Tensor, "head d_model gate"] | None, cfg: GatedQwen3Config
) -> Float[Tensor, "d_q_proj d_model"]:
    """(`W_Q`, `W_G`) → HF `q_proj.weight`, the exact inverse of `split_q_proj`."""
    queries = einops.rearrange(W_Q, "(kv g) m d -> kv (g d) m", kv=cfg.n_key_value_heads)
    if W_G is None:
        return queries.reshape(-1, W_Q.shape[1])
    gates = einops.rearrange(W_G, "(kv g) m w -> kv (g w) m", kv=cfg.n_key_value_heads)
    return torch.cat([queries, gates], dim=1).reshape(-1, W_Q.shape[1])


def merge_q_bias(
    b_Q: Float[Tensor, "head d_head"], b_G: Float[Tensor, "head gate"] | None, cfg: GatedQwen3Config
) -> Float[Tensor, "d_q_proj"]:
    return merge_q_proj(b_Q[:, None], None if b_G is None else b_G[:, None], cfg)[:, 0]
