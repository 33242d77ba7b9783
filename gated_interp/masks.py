"""The one check of an `attention_mask`: a `[batch, pos]` tensor of 0/1 (bool or integer).

The model, the analysis functions and their batching all read masks; each calls this, so that a
mask of 2s (positions 0, 2, 4, ... read as real by one reader and as padding by another) or of
floats is refused everywhere the same way instead of giving silently different numbers.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import AbstractDtype, Bool, Int
from torch import Tensor


class Mask(AbstractDtype):
    """The annotation of every `attention_mask`: `Mask[Tensor, "batch pos"]` takes bool or integer
    masks (the two kinds `check_attention_mask` accepts); jaxtyping's `Int` would refuse bool."""

    dtypes = [*Int.dtypes, *Bool.dtypes]


def check_attention_mask(attention_mask: Any, shape: tuple[int, ...] | None = None, of: str = "tokens") -> Tensor:
    """`attention_mask` as a tensor, after checking it is bool or integer, holds only 0 and 1,
    and (when `shape` is given) has that shape, `of` naming what it must match. Raises a
    `ValueError` naming what is wrong otherwise."""
    mask = torch.as_tensor(attention_mask)
    if mask.is_floating_point() or mask.is_complex():
        raise ValueError(
            f"attention_mask must hold 0/1 as bool or integers (1 = real token, 0 = padding), got dtype {mask.dtype}: "
            "pass e.g. the mask model.to_tokens(..., return_attention_mask=True) returns"
        )
    if mask.dtype != torch.bool and mask.numel() and not bool(((mask == 0) | (mask == 1)).all()):
        bad = sorted({int(v) for v in mask[(mask != 0) & (mask != 1)].unique()[:5].tolist()})
        raise ValueError(
            f"attention_mask must hold only 0 (padding) and 1 (real token), found {bad}: "
            "pass e.g. the mask model.to_tokens(..., return_attention_mask=True) returns"
        )
    if shape is not None and tuple(mask.shape) != tuple(shape):
        raise ValueError(f"attention_mask shape {tuple(mask.shape)} does not match {of} {tuple(shape)}")
    return mask
