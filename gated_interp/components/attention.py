"""Qwen3 attention plus the paper's output gate, in one place.

Read `forward` top to bottom: it is plain grouped-query attention (projections, per-head q/k
RMSNorm, rotary, softmax attention, `W_O`) with the gate as three visible lines:
gate logits from the residual stream, a sigmoid, and a multiply of the SDPA output before `W_O`.

Weights are stored per head, the TransformerLens way. The released checkpoints keep the gate
rows inside `q_proj`, interleaved per key-value group (the paper's release) or per query head
(Qwen3.5, Qwen3-Next); `gated_interp.loading.qproj_layout` turns either layout into `W_Q`/`W_G`
and back, so the component is the same for both. What those families change here are options of
the config, not another class: rotary on the leading `cfg.rotary_dim` dims of each head, and
zero-centred q/k norms (`1 + w`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor, nn
from transformer_lens import FactoredMatrix
from transformer_lens.hook_points import HookPoint

from gated_interp.components.bias import bias_to_add, register_bias
from gated_interp.components.per_head import as_matrix, per_head_weight
from gated_interp.components.rms_norm import RMSNorm
from gated_interp.components.rotary import RotaryEmbedding
from gated_interp.config import GatedQwen3Config


@dataclass
class KVCacheEntry:
    """Rotated keys and values of the positions already processed, for one layer."""

    keys: Float[Tensor, "batch k_pos kv_head d_head"]
    values: Float[Tensor, "batch k_pos kv_head d_head"]

    def append(
        self, keys: Float[Tensor, "batch pos kv_head d_head"], values: Float[Tensor, "batch pos kv_head d_head"]
    ) -> tuple[Float[Tensor, "batch k_pos kv_head d_head"], Float[Tensor, "batch k_pos kv_head d_head"]]:
        """Extend the cache by the new positions' keys and values; return all of them, cached first."""
        self.keys = torch.cat([self.keys, keys], dim=1)
        self.values = torch.cat([self.values, values], dim=1)
        return self.keys, self.values


class GatedAttention(nn.Module):
    def __init__(self, cfg: GatedQwen3Config):
        super().__init__()
        self.cfg = cfg
        h, kv, d, m = cfg.n_heads, cfg.n_key_value_heads, cfg.d_head, cfg.d_model
        # Laid out for one matmul over every head (`per_head`): no weight copy per call.
        self.W_Q = per_head_weight(h, m, d, cfg.dtype)
        self._W_K = per_head_weight(kv, m, d, cfg.dtype)
        self._W_V = per_head_weight(kv, m, d, cfg.dtype)
        self.W_O = nn.Parameter(torch.empty(h, d, m, dtype=cfg.dtype))
        bias_shapes = {"b_Q": (h, d), "_b_K": (kv, d), "_b_V": (kv, d), "b_O": (m,)}
        if cfg.is_gated:
            self.W_G = per_head_weight(h, m, cfg.gate_width, cfg.dtype)
            bias_shapes["b_G"] = (h, cfg.gate_width)
        for name, shape in bias_shapes.items():
            register_bias(self, name, shape, cfg.qkv_bias, cfg.dtype)
        if cfg.use_qk_norm:
            zero_centred = cfg.zero_centred_norms
            self.q_norm = RMSNorm(d, cfg.rms_norm_eps, cfg.dtype, hooked=False, zero_centred=zero_centred)
            self.k_norm = RMSNorm(d, cfg.rms_norm_eps, cfg.dtype, hooked=False, zero_centred=zero_centred)

        # Per-head copies of the block input (before ln1), with cfg.use_split_qkv_input / use_attn_in.
        self.hook_q_input = HookPoint()  # [batch, pos, head, d_model]; the gate reads it too
        self.hook_k_input = HookPoint()  # [batch, pos, kv_head, d_model]
        self.hook_v_input = HookPoint()  # [batch, pos, kv_head, d_model]
        self.hook_attn_in = HookPoint()  # [batch, pos, head, d_model]
        self.hook_q = HookPoint()  # [batch, pos, head, d_head], raw projection
        self.hook_k = HookPoint()  # [batch, pos, kv_head, d_head]
        self.hook_v = HookPoint()  # [batch, pos, kv_head, d_head]
        if cfg.use_qk_norm:
            self.hook_q_normed = HookPoint()  # [batch, pos, head, d_head]
            self.hook_k_normed = HookPoint()  # [batch, pos, kv_head, d_head]
        self.hook_rot_q = HookPoint()  # [batch, pos, head, d_head]
        self.hook_rot_k = HookPoint()  # [batch, pos, kv_head, d_head]
        self.hook_attn_scores = HookPoint()  # [batch, head, q_pos, k_pos], scaled and masked
        self.hook_pattern = HookPoint()  # [batch, head, q_pos, k_pos]
        if cfg.is_gated:
            self.hook_z_pre_gate = HookPoint()  # [batch, pos, head, d_head], the SDPA output
            self.hook_gate_logits = HookPoint()  # [batch, pos, head, gate]
            self.hook_gate = HookPoint()  # [batch, pos, head, gate], sigmoid(gate logits)
        self.hook_z = HookPoint()  # [batch, pos, head, d_head], what W_O reads
        # Always present, so that `model.set_use_attn_result(True)` needs no rebuild; it only
        # fires when cfg.use_attn_result is set (the per-head result costs a [.., head, d_model] tensor).
        self.hook_result = HookPoint()  # [batch, pos, head, d_model]

    # ---- weights, TransformerLens style ---------------------------------------------------
    def _expand(self, t: Tensor) -> Tensor:
        """Key-value-head tensors repeated so that row j belongs to query head j."""
        return t.repeat_interleave(self.cfg.n_groups, dim=0)

    @property
    def W_K(self) -> Float[Tensor, "head d_model d_head"]:
        return self._expand(self._W_K)

    @property
    def W_V(self) -> Float[Tensor, "head d_model d_head"]:
        return self._expand(self._W_V)

    @property
    def b_K(self) -> Float[Tensor, "head d_head"]:
        return self._expand(self._b_K)

    @property
    def b_V(self) -> Float[Tensor, "head d_head"]:
        return self._expand(self._b_V)

    @property
    def OV(self) -> FactoredMatrix:
        return FactoredMatrix(self.W_V, self.W_O)

    @property
    def QK(self) -> FactoredMatrix:
        """Ignores q/k RMSNorm and rotary, as TransformerLens' QK does for rotary models."""
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    # ---- forward ---------------------------------------------------------------------------
    def _project(self, x: Tensor, W: Tensor, b: Tensor) -> Tensor:
        """`x [batch, pos, d_model]` times per-head `W [head, d_model, d]` plus `b [head, d]` →
        `[batch, pos, head, d]`.

        One matmul against `W` as `[d_model, head * d]` (a view: see `per_head`): an einsum here
        runs one small batched matmul per head and then permutes its output, which is measurably
        slower than the single large matmul Hugging Face's `nn.Linear` does. The bias rides in
        the same call (`addmm`); a zero bias buffer is left out (`bias_to_add`)."""
        return F.linear(x, as_matrix(W).T, bias_to_add(b.flatten())).unflatten(-1, (W.shape[0], W.shape[2]))

    @staticmethod
    def _project_heads(x: Tensor, W: Tensor, b: Tensor) -> Tensor:
        """Per-head inputs `x [batch, pos, head, d_model]` times `W [head, d_model, d]` plus `b [head, d]`."""
        return einops.einsum(x, W, "batch pos head d_model, head d_model d -> batch pos head d") + b

    def _split_inputs(self, resid_pre: Tensor, norm: nn.Module) -> tuple[Tensor, Tensor, Tensor]:
        """TransformerLens' split inputs: per-head copies of the block input, hooked, then normed.
        Returns normed (query/gate, key, value) inputs, `[batch, pos, head|kv_head, d_model]`."""
        cfg = self.cfg

        def fork(n: int) -> Tensor:
            return resid_pre[:, :, None, :].expand(-1, -1, n, -1).clone()

        if cfg.use_split_qkv_input:
            q_in = self.hook_q_input(fork(cfg.n_heads))
            k_in = self.hook_k_input(fork(cfg.n_key_value_heads))
            v_in = self.hook_v_input(fork(cfg.n_key_value_heads))
        else:  # use_attn_in: one copy per query head; key-value head j reads copy j (as TransformerLens)
            q_in = self.hook_attn_in(fork(cfg.n_heads))
            k_in = v_in = q_in[:, :, : cfg.n_key_value_heads]
        return norm.normalize(q_in), norm.normalize(k_in), norm.normalize(v_in)

    def forward(
        self,
        x: Float[Tensor, "batch pos d_model"],
        cos: Float[Tensor, "batch pos d_rotary"],
        sin: Float[Tensor, "batch pos d_rotary"],
        mask: Bool[Tensor, "batch 1 q_pos k_pos"] | None = None,
        past_kv: KVCacheEntry | None = None,
        split_norm: nn.Module | None = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        """`mask` is True where a query may read a key; None means plainly causal, no padding.

        `x` is ln1's output, or, with `split_norm` (cfg.use_split_qkv_input / use_attn_in), the
        block input itself, which is copied per head, hooked, and normed by `split_norm`."""
        cfg = self.cfg
        if split_norm is None:
            q = self.hook_q(self._project(x, self.W_Q, self.b_Q))
            k = self.hook_k(self._project(x, self._W_K, self._b_K))
            v = self.hook_v(self._project(x, self._W_V, self._b_V))
            gate_in = x
        else:
            q_in, k_in, v_in = self._split_inputs(x, split_norm)
            q = self.hook_q(self._project_heads(q_in, self.W_Q, self.b_Q))
            k = self.hook_k(self._project_heads(k_in, self._W_K, self._b_K))
            v = self.hook_v(self._project_heads(v_in, self._W_V, self._b_V))
            gate_in = q_in
        if cfg.use_qk_norm:
            q = self.hook_q_normed(self.q_norm(q))
            k = self.hook_k_normed(self.k_norm(k))
        q = self.hook_rot_q(RotaryEmbedding.apply(q, cos, sin))
        k = self.hook_rot_k(RotaryEmbedding.apply(k, cos, sin))
        if past_kv is not None:
            k, v = past_kv.append(k, v)

        z = self._attend(q, k, v, mask)

        if cfg.is_gated:
            # The paper's G1 gate: query-dependent, from the same residual input as the queries.
            z = self.hook_z_pre_gate(z)
            project = self._project if split_norm is None else self._project_heads
            gate_logits = self.hook_gate_logits(project(gate_in, self.W_G, self.b_G))
            z = z * self.hook_gate(torch.sigmoid(gate_logits))
        z = self.hook_z(z)

        if cfg.use_attn_result:
            result = self.hook_result(
                einops.einsum(z, self.W_O, "batch pos head d_head, head d_head d_model -> batch pos head d_model")
            )
            return result.sum(dim=-2) + self.b_O
        # `W_O [head, d_head, d_model]` is already `[head * d_head, d_model]` in memory.
        return F.linear(z.flatten(-2), self.W_O.flatten(0, 1).T, bias_to_add(self.b_O))

    def _attend(
        self,
        q: Float[Tensor, "batch q_pos head d_head"],
        k: Float[Tensor, "batch k_pos kv_head d_head"],
        v: Float[Tensor, "batch k_pos kv_head d_head"],
        mask: Bool[Tensor, "batch 1 q_pos k_pos"] | None,
    ) -> Float[Tensor, "batch q_pos head d_head"]:
        if mask is None and q.shape[1] != k.shape[1]:
            raise ValueError("a mask is required when queries and keys differ in length (KV cache)")
        needs_pattern = self.hook_attn_scores.has_hooks() or self.hook_pattern.has_hooks()
        if not needs_pattern:
            # Fast path: nobody looks at the pattern, so let the fused kernel skip materialising it.
            z = F.scaled_dot_product_attention(
                q.transpose(1, 2),
                k.transpose(1, 2),
                v.transpose(1, 2),
                attn_mask=mask,
                is_causal=mask is None,
                enable_gqa=self.cfg.n_groups > 1,
            )
            return z.transpose(1, 2)

        # Query heads are grouped by key-value head ([batch, kv_head, group, ...]), so that one
        # broadcast matmul serves every group without copying keys and values per query head.
        batch, n_q, n_heads, d_head = q.shape
        n_kv, groups = k.shape[2], self.cfg.n_groups
        q_grouped = q.permute(0, 2, 1, 3).unflatten(1, (n_kv, groups))  # [batch, kv, group, q_pos, d]
        k_grouped = k.permute(0, 2, 3, 1)[:, :, None]  # [batch, kv, 1, d, k_pos]
        v_grouped = v.permute(0, 2, 1, 3)[:, :, None]  # [batch, kv, 1, k_pos, d]
        scores = (q_grouped @ k_grouped).flatten(1, 2) / math.sqrt(d_head)  # [batch, head, q_pos, k_pos]
        if mask is None:
            n = q.shape[1]
            mask = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()[None, None]
        scores = self.hook_attn_scores(scores.masked_fill(~mask, float("-inf")))
        softmax_dtype = torch.promote_types(scores.dtype, torch.float32)  # fp32 or better, as HF
        pattern = self.hook_pattern(torch.softmax(scores.to(softmax_dtype), dim=-1).to(q.dtype))
        z = pattern.unflatten(1, (n_kv, groups)) @ v_grouped  # [batch, kv, group, q_pos, d]
        return z.flatten(1, 2).transpose(1, 2)
