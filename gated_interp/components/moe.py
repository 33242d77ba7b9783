"""Sparse mixture-of-experts MLP (Qwen3-Next, Qwen3.5-MoE) with hook points.

A router picks `n_experts_per_token` SwiGLU experts per token (softmax over the experts, top k,
optionally renormalised to sum to one); their outputs, weighted, are summed, plus a shared SwiGLU
expert scaled by `sigmoid(x W_shared_gate)`. Expert weights are stacked, TransformerLens style:
`W_gate`/`W_in` `[expert, d_model, d_mlp_expert]`, `W_out` `[expert, d_mlp_expert, d_model]`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from gated_interp.components.mlp import GatedMLP
from gated_interp.config import GatedQwen3Config


class SparseMoE(nn.Module):
    def __init__(self, cfg: GatedQwen3Config):
        super().__init__()
        self.cfg = cfg
        e, m, f, dt = cfg.n_experts, cfg.d_model, cfg.d_mlp_expert, cfg.dtype
        self.W_router = nn.Parameter(torch.empty(m, e, dtype=dt))
        self.W_gate = nn.Parameter(torch.empty(e, m, f, dtype=dt))
        self.W_in = nn.Parameter(torch.empty(e, m, f, dtype=dt))
        self.W_out = nn.Parameter(torch.empty(e, f, m, dtype=dt))
        if cfg.d_mlp_shared:
            self.shared_expert = GatedMLP(cfg, d_mlp=cfg.d_mlp_shared)
            self.W_shared_gate = nn.Parameter(torch.empty(m, 1, dtype=dt))
            self.hook_shared_gate = HookPoint()  # [batch, pos, 1], sigmoid(x W_shared_gate)
        self.hook_router_logits = HookPoint()  # [batch, pos, expert]
        self.hook_expert_indices = HookPoint()  # [batch, pos, top_k], the chosen experts (int64)
        self.hook_expert_weights = HookPoint()  # [batch, pos, top_k], their weights in the sum

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        cfg = self.cfg
        logits = self.hook_router_logits(F.linear(x, self.W_router.T))
        weights, indices = self._route(logits)
        indices = self.hook_expert_indices(indices)
        weights = self.hook_expert_weights(weights)

        flat_x, flat_idx, flat_w = x.flatten(0, 1), indices.flatten(0, 1), weights.flatten(0, 1)
        out = torch.zeros_like(flat_x)
        for expert in flat_idx.unique().tolist():  # only the experts some token chose
            token, slot = torch.where(flat_idx == expert)
            h = flat_x[token]
            hidden = F.silu(h @ self.W_gate[expert]) * (h @ self.W_in[expert])
            out.index_add_(0, token, (hidden @ self.W_out[expert]) * flat_w[token, slot, None])
        out = out.view_as(x)
        if cfg.d_mlp_shared:
            shared_gate = self.hook_shared_gate(torch.sigmoid(F.linear(x, self.W_shared_gate.T)))
            out = out + shared_gate * self.shared_expert(x)
        return out

    def _route(
        self, logits: Float[Tensor, "batch pos expert"]
    ) -> tuple[Float[Tensor, "batch pos top_k"], Int[Tensor, "batch pos top_k"]]:
        """The chosen experts' weights and indices: softmax in float32, top k, renormalised if asked."""
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
        weights, indices = torch.topk(probs, self.cfg.n_experts_per_token, dim=-1)
        if self.cfg.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights.to(logits.dtype), indices
