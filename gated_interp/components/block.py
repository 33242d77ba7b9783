"""A pre-norm transformer block with TransformerLens' residual-stream hooks.

The block is layer-type aware (`cfg.layer_type(layer)`): its token mixer is softmax attention
(`self.attn`, the gated attention of the paper and of Qwen3.5/Next's full-attention layers) or Gated
DeltaNet (`self.linear_attn`); its MLP is SwiGLU or a sparse mixture of experts (`cfg.mlp_kind`).
The residual and norm hooks are the same on every layer; `hook_attn_out` holds the mixer's output.
"""

from __future__ import annotations

from jaxtyping import Bool, Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from gated_interp.components.attention import GatedAttention, KVCacheEntry
from gated_interp.components.linear_attention import GatedDeltaNet, RecurrentState
from gated_interp.components.mlp import GatedMLP
from gated_interp.components.moe import SparseMoE
from gated_interp.components.rms_norm import RMSNorm
from gated_interp.config import GatedQwen3Config
from gated_interp.masks import Mask


class TransformerBlock(nn.Module):
    # Read by TransformerLens 4.x's logit lens: the block's output (hook_resid_post) is the one
    # residual stream the next block, or ln_final and the unembedding, read.
    hook_out_is_single_residual_stream = True

    def __init__(self, cfg: GatedQwen3Config, layer: int):
        super().__init__()
        self.cfg = cfg
        self.layer = layer
        self.layer_type = cfg.layer_type(layer)
        self.ln1 = RMSNorm(cfg.d_model, cfg.rms_norm_eps, cfg.dtype, zero_centred=cfg.zero_centred_norms)
        if self.layer_type == "full_attention":
            self.attn = GatedAttention(cfg)
        else:
            self.linear_attn = GatedDeltaNet(cfg)
        self.ln2 = RMSNorm(cfg.d_model, cfg.rms_norm_eps, cfg.dtype, zero_centred=cfg.zero_centred_norms)
        self.mlp = SparseMoE(cfg) if cfg.mlp_kind(layer) == "moe" else GatedMLP(cfg)
        self.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
        self.hook_attn_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_mid = HookPoint()  # [batch, pos, d_model]
        self.hook_mlp_in = HookPoint()  # [batch, pos, d_model], with cfg.use_hook_mlp_in
        self.hook_mlp_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_post = HookPoint()  # [batch, pos, d_model]

    def forward(
        self,
        resid_pre: Float[Tensor, "batch pos d_model"],
        cos: Float[Tensor, "batch pos d_rotary"],
        sin: Float[Tensor, "batch pos d_rotary"],
        mask: Bool[Tensor, "batch 1 q_pos k_pos"] | None = None,
        past_kv: KVCacheEntry | RecurrentState | None = None,
        padding_mask: Mask[Tensor, "batch pos"] | None = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        """`mask` is the attention mask (full-attention layers); `padding_mask` marks the new
        positions' real tokens (1) and padding (0) for a linear-attention layer (None: no padding).
        `past_kv` is this layer's cache entry: keys and values, or the recurrent state."""
        cfg = self.cfg
        resid_pre = self.hook_resid_pre(resid_pre)
        normed = self.ln1(resid_pre)  # ln1's hooks always see the block input itself
        if self.layer_type == "linear_attention":
            attn_out = self.linear_attn(normed, padding_mask, past_kv)
        elif cfg.use_split_qkv_input or cfg.use_attn_in:
            attn_out = self.attn(resid_pre, cos, sin, mask, past_kv, split_norm=self.ln1)
        else:
            attn_out = self.attn(normed, cos, sin, mask, past_kv)
        attn_out = self.hook_attn_out(attn_out)
        resid_mid = self.hook_resid_mid(resid_pre + attn_out)
        mlp_in = self.hook_mlp_in(resid_mid.clone()) if cfg.use_hook_mlp_in else resid_mid
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(mlp_in)))
        return self.hook_resid_post(resid_mid + mlp_out)
