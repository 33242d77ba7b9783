"""RMSNorm with TransformerLens' hook points (`hook_scale`, `hook_normalized`)."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint


class RMSNorm(nn.Module):
    """`w * x / sqrt(mean(x^2) + eps)`, computed in float32 as Hugging Face Qwen3 does.

    `hook_scale` holds the divisor and `hook_normalized` the unweighted result, so that
    `ActivationCache.apply_ln_to_stack` can divide any residual component by the cached scale.

    `zero_centred` (Qwen3.5, Qwen3-Next): the weight is stored as an offset from one and the norm
    multiplies by `1 + w`, in float32 before rounding to the input dtype, as their Hugging Face
    code does. Folded, such a norm keeps `w = 0`.
    """

    def __init__(
        self,
        width: int,
        eps: float,
        dtype: torch.dtype = torch.float32,
        hooked: bool = True,
        zero_centred: bool = False,
    ):
        super().__init__()
        self.eps = eps
        self.zero_centred = zero_centred
        self.w = nn.Parameter(torch.zeros(width, dtype=dtype) if zero_centred else torch.ones(width, dtype=dtype))
        # q_norm/k_norm are unhooked: the attention hooks their outputs as hook_q_normed/hook_k_normed.
        self.hook_scale = HookPoint() if hooked else nn.Identity()  # [..., 1]
        self.hook_normalized = HookPoint() if hooked else nn.Identity()  # [..., width]

    def forward(self, x: Float[Tensor, "... width"]) -> Float[Tensor, "... width"]:
        return self.normalize(x, hooked=True)

    def normalize(self, x: Float[Tensor, "... width"], hooked: bool = False) -> Float[Tensor, "... width"]:
        """The norm; without `hooked`, `hook_scale`/`hook_normalized` do not fire (for the per-head
        split inputs, whose scales are not the block's)."""
        in_dtype = x.dtype
        # Upcast half precision as HF does, but never downcast a float64 model.
        x32 = x.to(torch.promote_types(x.dtype, torch.float32))
        scale = (x32.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()
        if hooked:
            scale = self.hook_scale(scale)
        normalized = x32 / scale
        if hooked:
            normalized = self.hook_normalized(normalized)
        if self.zero_centred:
            return (normalized * (1.0 + self.w.to(normalized.dtype))).to(in_dtype)
        return normalized.to(in_dtype) * self.w
