"""Gated DeltaNet, the linear-attention token mixer of Qwen3.5 and Qwen3-Next, with hook points.

Read `forward` top to bottom: projections of the (ln1-normed) residual stream into queries, keys,
values, the output gate's input `z`, and the per-head scalars `b`, `a`; a causal depthwise
convolution with SiLU over queries, keys and values; `beta = sigmoid(b)` and the log-decay
`g = -exp(A_log) * softplus(a + dt_bias)`; the gated delta rule (q and k L2-normalised inside it);
an RMSNorm per value head gated by `silu(z)`; `W_O`.

The delta rule itself is transformers' `torch_chunk_gated_delta_rule` (or flash-linear-attention's
kernel, which transformers picks when that package is installed), called as a library; one new
token with a carried state takes the recurrent form. Padding positions are zeroed before the
projections, as transformers does: a left-padded row then starts from the same zero state and
zero convolution history as the row alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from gated_interp.components.per_head import as_matrix, per_head_weight
from gated_interp.config import GatedQwen3Config
from gated_interp.masks import Mask


@dataclass
class RecurrentState:
    """What a Gated DeltaNet layer carries from one call to the next (generation), the linear
    layers' counterpart of `KVCacheEntry`; empty (None) before the first call, updated in place."""

    conv: Float[Tensor, "batch d_conv conv_past"] | None = None  # the convolution's last inputs
    recurrent: Float[Tensor, "batch lin_v_head d_lin_key d_lin_value"] | None = None  # the delta rule's state
    n_seen: int = 0  # positions processed so far


class GatedDeltaNet(nn.Module):
    def __init__(self, cfg: GatedQwen3Config):
        super().__init__()
        self.cfg = cfg
        m, dt = cfg.d_model, cfg.dtype
        kh, vh, dk, dv = cfg.linear_n_key_heads, cfg.linear_n_value_heads, cfg.linear_d_key, cfg.linear_d_value
        # Laid out for one matmul over every head (`per_head`): no weight copy per call.
        self.W_Q = per_head_weight(kh, m, dk, dt)
        self.W_K = per_head_weight(kh, m, dk, dt)
        self.W_V = per_head_weight(vh, m, dv, dt)
        self.W_Z = per_head_weight(vh, m, dv, dt)  # the output gate's input
        self.W_b = nn.Parameter(torch.empty(m, vh, dtype=dt))  # beta logits (write strength)
        self.W_a = nn.Parameter(torch.empty(m, vh, dtype=dt))  # decay input
        # Depthwise convolution over the channels [queries, keys, values] (transformers' order).
        self.conv = nn.Parameter(torch.empty(2 * kh * dk + vh * dv, cfg.linear_conv_kernel, dtype=dt))
        self.A_log = nn.Parameter(torch.zeros(vh, dtype=dt))
        self.dt_bias = nn.Parameter(torch.ones(vh, dtype=dt))
        self.norm_w = nn.Parameter(torch.ones(dv, dtype=dt))  # the gated RMSNorm's weight (plain `w`, not 1 + w)
        self.W_O = nn.Parameter(torch.empty(vh, dv, m, dtype=dt))

        self.hook_q = HookPoint()  # [batch, pos, lin_k_head, d_lin_key], after the convolution
        self.hook_k = HookPoint()  # [batch, pos, lin_k_head, d_lin_key], after the convolution
        self.hook_v = HookPoint()  # [batch, pos, lin_v_head, d_lin_value], after the convolution
        self.hook_z = HookPoint()  # [batch, pos, lin_v_head, d_lin_value], the output gate's input
        self.hook_beta = HookPoint()  # [batch, pos, lin_v_head]
        self.hook_decay = HookPoint()  # [batch, pos, lin_v_head], log of the per-step decay (<= 0)
        self.hook_recurrent_out = HookPoint()  # [batch, pos, lin_v_head, d_lin_value], before the gated norm
        self.hook_gate = HookPoint()  # [batch, pos, lin_v_head, d_lin_value], silu(z): the output gate
        self.hook_out = HookPoint()  # [batch, pos, lin_v_head, d_lin_value], what W_O reads

    def forward(
        self,
        x: Float[Tensor, "batch pos d_model"],
        padding_mask: Mask[Tensor, "batch pos"] | None = None,
        state: RecurrentState | None = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        """`padding_mask` is 1 at real tokens, 0 at padding (None: no padding). A given `state`
        is read, then updated in place to the state after the last position."""
        cfg = self.cfg
        if padding_mask is not None:
            x = x * padding_mask[:, :, None].to(x.dtype)
        batch, pos, _ = x.shape
        kh, vh, dk, dv = cfg.linear_n_key_heads, cfg.linear_n_value_heads, cfg.linear_d_key, cfg.linear_d_value
        carried = state is not None and state.conv is not None
        # Queries, keys and values each: projection, causal depthwise convolution over the inputs
        # carried from earlier positions (zeros on a first call: the convolution pads, no copy)
        # and these, SiLU. The convolution is per channel, so the three parts run apart:
        # concatenating their weights into transformers' one matrix would copy them every call.
        widths = [kh * dk, kh * dk, vh * dv]
        n_past = cfg.linear_conv_kernel - 1
        parts, histories = [], []
        for W, conv, past in zip(
            (self.W_Q, self.W_K, self.W_V),
            self.conv.split(widths),
            state.conv.split(widths, dim=1) if carried else [None] * 3,
        ):
            projected = F.linear(x, as_matrix(W).T).transpose(1, 2)  # [batch, channel, pos]
            if past is None:
                convolved = F.conv1d(projected, conv[:, None, :], padding=n_past, groups=conv.shape[0])[..., :pos]
                kept = projected[..., max(0, pos - n_past) :]
                history = F.pad(kept, (n_past - kept.shape[-1], 0)) if state is not None else None
            else:
                history = torch.cat([past.to(projected.dtype), projected], dim=-1)
                convolved = F.conv1d(history, conv[:, None, :], groups=conv.shape[0])
                history = history[..., history.shape[-1] - n_past :]
            parts.append(F.silu(convolved).transpose(1, 2))
            histories.append(history)
        q = self.hook_q(parts[0].unflatten(-1, (kh, dk)))
        k = self.hook_k(parts[1].unflatten(-1, (kh, dk)))
        v = self.hook_v(parts[2].unflatten(-1, (vh, dv)))
        z = self.hook_z(F.linear(x, as_matrix(self.W_Z).T).unflatten(-1, (vh, dv)))
        beta = self.hook_beta(torch.sigmoid(F.linear(x, self.W_b.T)))
        # In float32 as transformers does (A_log.exp() overflows half precision).
        a = F.linear(x, self.W_a.T).float()
        decay = self.hook_decay(-self.A_log.float().exp() * F.softplus(a + self.dt_bias.float()))

        recurrent_out, recurrent = _delta_rule(q, k, v, decay, beta, state.recurrent if carried else None)
        recurrent_out = self.hook_recurrent_out(recurrent_out)
        out = self.hook_out(self._gated_norm(recurrent_out, z))
        if state is not None:
            state.conv, state.recurrent = torch.cat(histories, dim=1), recurrent
            state.n_seen += pos
        return F.linear(out.flatten(-2), self.W_O.flatten(0, 1).T)

    def _gated_norm(
        self, x: Float[Tensor, "batch pos lin_v_head d_lin_value"], z: Float[Tensor, "batch pos lin_v_head d_lin_value"]
    ) -> Float[Tensor, "batch pos lin_v_head d_lin_value"]:
        """RMSNorm over each value head, times `silu(z)`: transformers' `RMSNormGated`, rounding included."""
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.cfg.rms_norm_eps)
        return (self.norm_w * normed.to(x.dtype) * self.hook_gate(F.silu(z.float()))).to(x.dtype)


def _delta_rule(
    q: Float[Tensor, "batch pos lin_k_head d_lin_key"],
    k: Float[Tensor, "batch pos lin_k_head d_lin_key"],
    v: Float[Tensor, "batch pos lin_v_head d_lin_value"],
    decay: Float[Tensor, "batch pos lin_v_head"],
    beta: Float[Tensor, "batch pos lin_v_head"],
    initial: Float[Tensor, "batch lin_v_head d_lin_key d_lin_value"] | None,
) -> tuple[Float[Tensor, "batch pos lin_v_head d_lin_value"], Float[Tensor, "batch lin_v_head d_lin_key d_lin_value"]]:
    # Imported here: transformers' modeling module is large, and only hybrid models need it.
    from transformers.models.qwen3_next.modeling_qwen3_next import (
        torch_chunk_gated_delta_rule,
        torch_recurrent_gated_delta_rule,
    )

    rule = torch_recurrent_gated_delta_rule if initial is not None and q.shape[1] == 1 else torch_chunk_gated_delta_rule
    out, final = rule(
        q, k, v, g=decay, beta=beta, initial_state=initial, output_final_state=True, use_qk_l2norm_in_kernel=True
    )
    return out, final
