"""The model's parts, each small enough to read on one screen.

Axis glossary: every axis name used in a shape annotation of this package (tests/model/test_shapes.py
checks that none is missing). Within one call the same name means the same size.
    batch        sequences in the batch
    pos          token positions
    q_pos        query positions, where queries and keys both appear
    k_pos        key positions (with a KV cache: the cached ones and the new ones)
    past_pos     positions already in the KV cache
    total_pos    prompt plus generated positions (`generate`'s output)
    window       fixed token windows of a held-out or training set
    eval_window  held-out windows, beside training `window`s in the same call
    layer        blocks (0-based)
    attn_layer   the layers an attention quantity is measured on (a hybrid model's full-attention ones)
    head         query heads (`n_heads`)
    kv_head      key-value heads (`n_key_value_heads`); query head j reads kv head j // n_groups
    d_head       width of one head
    half_d_head  rotary frequencies, d_rotary // 2
    d_rotary     leading dims of a head that rotary turns (`cfg.rotary_dim`: d_head, or a part of it)
    lin_k_head   Gated DeltaNet query/key heads (`cfg.linear_n_key_heads`)
    lin_v_head   Gated DeltaNet value heads (`cfg.linear_n_value_heads`); v head j reads k head j // ratio
    d_lin_key    width of a DeltaNet query/key head
    d_lin_value  width of a DeltaNet value head
    d_conv       channels of the DeltaNet's causal convolution: queries, keys, values concatenated
    conv_past    inputs the convolution keeps from earlier positions (`cfg.linear_conv_kernel` - 1)
    expert       routed experts of a sparse-MoE MLP
    top_k        experts chosen per token
    d_mlp_expert hidden width of one routed expert
    d_mlp_shared hidden width of a sparse-MoE layer's shared expert
    gate         gate logits per head: 1 (headwise) or d_head (elementwise)
    d_q_proj     rows of the released checkpoints' q_proj: queries and gate logits interleaved
    d_model      residual stream width
    d_mlp        MLP hidden width
    d_vocab      vocabulary size
    width        the axis a norm normalises (d_model, or d_head for the q/k norm)
    out          output width of a weight matrix whose input side is being rescaled
    n            flat items (values for a histogram, prompts of a patching batch)
    k            patches run in one forward pass (activation patching)
    n_axes       coordinates that name one patch (layer, head, position)
    x            the column axis of a patching result: head or position
    seq          sequences of a whole measurement, pooled across batches (`analysis.streaming`)
    key          chosen key positions (`analysis.attention_to_keys`)
    threshold    gate-score thresholds counted below (`analysis.reductions.GATE_THRESHOLDS`)
    boot         bootstrap resamples (`analysis.bootstrap`)
    rest         any trailing axes a statistic keeps (`analysis.bootstrap`)
    quantity     per-head quantities of one table (`analysis.linear_attention`)
    column       the columns a table derives from its quantities
    sum_count    a per-sequence sum and its count, pooled by dividing sums by counts
    component    rows of a decomposition (`analysis.gate_attribution_stack`: embed, heads, biases, MLPs)
"""

from gated_interp.components.attention import GatedAttention, KVCacheEntry
from gated_interp.components.block import TransformerBlock
from gated_interp.components.embed import Embed, Unembed
from gated_interp.components.linear_attention import GatedDeltaNet, RecurrentState
from gated_interp.components.mlp import GatedMLP
from gated_interp.components.moe import SparseMoE
from gated_interp.components.rms_norm import RMSNorm
from gated_interp.components.rotary import RotaryEmbedding

__all__ = [
    "Embed",
    "GatedAttention",
    "GatedDeltaNet",
    "GatedMLP",
    "KVCacheEntry",
    "RMSNorm",
    "RecurrentState",
    "RotaryEmbedding",
    "SparseMoE",
    "TransformerBlock",
    "Unembed",
]
