"""Biases that always exist, TransformerLens style, whether or not the checkpoint has them."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def register_bias(module: nn.Module, name: str, shape: tuple[int, ...], trainable: bool, dtype: torch.dtype) -> None:
    """A bias that always exists, as in TransformerLens: a parameter when the checkpoint has one,
    else a zero buffer. The buffer is in the state dict (TL's keys) but not in `parameters()`, so
    training cannot grow a bias the released format has no place for; the forward pass still adds
    it, so a value a user writes into it takes effect (`save_hf` refuses to drop a non-zero one)."""
    zeros = torch.zeros(*shape, dtype=dtype)
    if trainable:
        module.register_parameter(name, nn.Parameter(zeros))
    else:
        module.register_buffer(name, zeros)


def bias_to_add(bias: Tensor) -> Tensor | None:
    """`bias`, or None where adding it is known to change nothing: a zero buffer on the CPU.

    A matmul with a bias first broadcasts the bias into its whole output and then accumulates
    onto it: a pass over `[batch, pos, out]` that, for the zero buffers of the released format,
    costs up to a tenth of a small model's forward on a CPU (the unembedding's bias most). The
    zero check runs on every call (a few microseconds), so a value written into the buffer
    takes effect at once. Parameters (their gradient must flow) and other devices (where the
    check would wait for the device, and the bias costs nothing extra) always add it."""
    if bias.requires_grad or bias.device.type != "cpu" or bool(bias.any()):
        return bias
    return None
