"""Rotary position embeddings in the Hugging Face "rotate half" convention used by Qwen3."""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn


class RotaryEmbedding(nn.Module):
    """Maps position ids to (cos, sin) tables; `apply` rotates queries or keys with them.

    Positions are per sequence (`[batch, pos]`) rather than shared, because a left-padded sequence
    must see the same positions as its unpadded self. `d_head` here is the rotary width
    (`cfg.rotary_dim`): with a partial rotary factor (Qwen3.5, Qwen3-Next) `apply` turns only the
    leading dims of each head and passes the rest through.
    """

    def __init__(self, d_head: int, theta: float, scaling: dict[str, Any] | None = None):
        super().__init__()
        self.d_head, self.theta = d_head, theta
        self.position_scale = 1.0
        if scaling is not None and scaling.get("rope_type", scaling.get("type")) == "linear":
            self.position_scale = 1.0 / float(scaling["factor"])
        self.register_buffer("inv_freq", self._inv_freq(), persistent=False)

    def _inv_freq(self) -> Float[Tensor, "half_d_head"]:
        # float64 then float32 matches HF's table to the last bit closely enough for 1e-4 logits.
        return (1.0 / (self.theta ** (torch.arange(0, self.d_head, 2, dtype=torch.float64) / self.d_head))).float()

    def _apply(self, fn, recurse: bool = True):
        # `model.half()` / `.to(bfloat16)` would round the frequencies to 8-11 bits and shift every
        # rotation angle; the table stays float32 (as when a model is built in half precision),
        # only its device follows the model.
        super()._apply(fn, recurse)
        self.inv_freq = self._inv_freq().to(self.inv_freq.device)
        return self

    def forward(
        self, positions: Int[Tensor, "batch pos"], dtype: torch.dtype
    ) -> tuple[Float[Tensor, "batch pos d_rotary"], Float[Tensor, "batch pos d_rotary"]]:
        angles = (positions.float() * self.position_scale)[..., None] * self.inv_freq
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)

    @staticmethod
    def apply(
        x: Float[Tensor, "batch pos head d_head"],
        cos: Float[Tensor, "batch pos d_rotary"],
        sin: Float[Tensor, "batch pos d_rotary"],
    ) -> Float[Tensor, "batch pos head d_head"]:
        if cos.shape[-1] < x.shape[-1]:  # partial rotary: the trailing dims pass unturned
            turned = RotaryEmbedding.apply(x[..., : cos.shape[-1]], cos, sin)
            return torch.cat([turned, x[..., cos.shape[-1] :]], dim=-1)
        half = x.shape[-1] // 2
        rotated_half = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos[:, :, None, :] + rotated_half * sin[:, :, None, :]
