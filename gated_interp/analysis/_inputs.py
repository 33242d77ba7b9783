"""Prompts or tokens → right-padded token batches with attention masks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

Prompts = Sequence[str] | str | Int[Tensor, "batch pos"]


def as_batches(
    model: Any,
    prompts: Prompts,
    batch_size: int | None = None,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
) -> Iterator[tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]]:
    """Yield `(tokens [batch, pos], attention_mask [batch, pos])` chunks of at most `batch_size`.

    Strings are tokenised per chunk by `model.to_tokens(..., return_attention_mask=True)`
    (right-padded, so position 0 is always a real token); token tensors are cut into chunks as
    given, with `attention_mask` or all ones.
    """
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
    if isinstance(prompts, str):
        prompts = [prompts]
    if isinstance(prompts, Tensor):
        tokens = prompts[None] if prompts.ndim == 1 else prompts
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [batch, pos], got shape {tuple(prompts.shape)}")
        mask = torch.ones_like(tokens) if attention_mask is None else torch.as_tensor(attention_mask)
        if mask.ndim == 1:
            mask = mask[None]
        if mask.shape != tokens.shape:
            raise ValueError(f"attention_mask shape {tuple(mask.shape)} does not match tokens {tuple(tokens.shape)}")
        size = batch_size or tokens.shape[0]
        for start in range(0, tokens.shape[0], size):
            chunk_mask = mask[start : start + size]
            # Trailing columns that are padding in every row only cost time.
            length = int(chunk_mask.sum(1).max())
            yield (
                tokens[start : start + size, :length].to(model.cfg.device),
                chunk_mask[:, :length].to(model.cfg.device),
            )
        return
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts given: pass a non-empty list of strings or a [batch, pos] token tensor")
    if attention_mask is not None:
        raise ValueError("attention_mask is only for token tensors; strings are padded and masked for you")
    size = batch_size or len(prompts)
    for start in range(0, len(prompts), size):
        yield model.to_tokens(prompts[start : start + size], return_attention_mask=True)


def n_sequences(prompts: Prompts) -> int:
    if isinstance(prompts, str):
        return 1
    if isinstance(prompts, Tensor):
        return 1 if prompts.ndim == 1 else prompts.shape[0]
    return len(prompts)
