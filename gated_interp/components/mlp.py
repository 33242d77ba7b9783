"""SwiGLU MLP with TransformerLens' gated-MLP hook names."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from gated_interp.config import GatedQwen3Config


class GatedMLP(nn.Module):
    """`W_out(silu(x W_gate) * (x W_in))`; `hook_pre` is the gate projection, as in TransformerLens."""

    def __init__(self, cfg: GatedQwen3Config):
        super().__init__()
        self.W_gate = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp, dtype=cfg.dtype))
        self.W_in = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp, dtype=cfg.dtype))
        self.W_out = nn.Parameter(torch.empty(cfg.d_mlp, cfg.d_model, dtype=cfg.dtype))
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp]
        self.hook_pre_linear = HookPoint()  # [batch, pos, d_mlp]
        self.hook_post = HookPoint()  # [batch, pos, d_mlp]

    @property
    def b_out(self) -> Float[Tensor, "d_model"]:
        return torch.zeros(self.W_out.shape[-1], dtype=self.W_out.dtype, device=self.W_out.device)

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        pre = self.hook_pre(x @ self.W_gate)
        pre_linear = self.hook_pre_linear(x @ self.W_in)
        post = self.hook_post(F.silu(pre) * pre_linear)
        return post @ self.W_out
