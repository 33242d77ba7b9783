"""SwiGLU MLP with TransformerLens' gated-MLP hook names."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from gated_interp.components.bias import bias_to_add, register_bias
from gated_interp.config import GatedQwen3Config


class GatedMLP(nn.Module):
    """`W_out(silu(x W_gate) * (x W_in))`; `hook_pre` is the gate projection, as in TransformerLens."""

    def __init__(self, cfg: GatedQwen3Config, d_mlp: int | None = None):
        """`d_mlp` overrides cfg.d_mlp (a sparse-MoE layer's shared expert has its own width)."""
        super().__init__()
        d_mlp = cfg.d_mlp if d_mlp is None else d_mlp
        self.W_gate = nn.Parameter(torch.empty(cfg.d_model, d_mlp, dtype=cfg.dtype))
        self.W_in = nn.Parameter(torch.empty(cfg.d_model, d_mlp, dtype=cfg.dtype))
        self.W_out = nn.Parameter(torch.empty(d_mlp, cfg.d_model, dtype=cfg.dtype))
        # Qwen3's MLP has no biases: zero buffers, there for TransformerLens code that reads them.
        for name, width in (("b_gate", d_mlp), ("b_in", d_mlp), ("b_out", cfg.d_model)):
            register_bias(self, name, (width,), trainable=False, dtype=cfg.dtype)
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp]
        self.hook_pre_linear = HookPoint()  # [batch, pos, d_mlp]
        self.hook_post = HookPoint()  # [batch, pos, d_mlp]

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        # Each bias sits on its own projection, as an `nn.Linear` bias would (`b_in` on the up
        # projection, not after the product as in TransformerLens' GatedMLP); all are zero here.
        pre = self.hook_pre(F.linear(x, self.W_gate.T, bias_to_add(self.b_gate)))
        pre_linear = self.hook_pre_linear(F.linear(x, self.W_in.T, bias_to_add(self.b_in)))
        post = self.hook_post(F.silu(pre) * pre_linear)
        return F.linear(post, self.W_out.T, bias_to_add(self.b_out))
