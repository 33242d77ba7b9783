"""Biases that always exist, TransformerLens style, whether or not the checkpoint has them."""

from __future__ import annotations

import torch
from torch import nn


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
