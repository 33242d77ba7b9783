"""The model's parts, each small enough to read on one screen.

Axis glossary used in every shape annotation of this package:
    batch    sequences in the batch
    pos      token positions (query positions where both appear: `q_pos`, `k_pos`)
    head     query heads (`n_heads`)
    kv_head  key-value heads (`n_key_value_heads`); query head j reads kv head j // n_groups
    d_head   width of one head
    gate     gate logits per head: 1 (headwise) or d_head (elementwise)
    d_model  residual stream width
    d_mlp    MLP hidden width
    d_vocab  vocabulary size
    one      an axis of size 1 (RMSNorm's `hook_scale`, `[batch, pos, one]`)
"""

from gated_interp.components.attention import GatedAttention, KVCacheEntry
from gated_interp.components.block import TransformerBlock
from gated_interp.components.embed import Embed, Unembed
from gated_interp.components.mlp import GatedMLP
from gated_interp.components.rms_norm import RMSNorm
from gated_interp.components.rotary import RotaryEmbedding

__all__ = [
    "Embed",
    "GatedAttention",
    "GatedMLP",
    "KVCacheEntry",
    "RMSNorm",
    "RotaryEmbedding",
    "TransformerBlock",
    "Unembed",
]
