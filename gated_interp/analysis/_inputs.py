"""Prompts or tokens → padded token batches with attention masks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from gated_interp.masks import Mask, check_attention_mask

Prompts = Sequence[str] | str | Int[Tensor, "batch pos"]


def as_batches(
    model: Any,
    prompts: Prompts,
    batch_size: int | None = None,
    attention_mask: Mask[Tensor, "batch pos"] | None = None,
) -> Iterator[tuple[Int[Tensor, "batch pos"], Mask[Tensor, "batch pos"]]]:
    """Yield `(tokens [batch, pos], attention_mask [batch, pos])` chunks of at most `batch_size`.

    Strings are tokenised per chunk by `model.to_tokens(..., return_attention_mask=True)` (padded
    on the model's side); token tensors are cut into chunks as given, with `attention_mask` (0/1,
    padding on either side or in holes) or all ones, less the columns that are padding in every
    row of the chunk.
    """
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
    if isinstance(prompts, str):
        prompts = [prompts]
    if isinstance(prompts, Tensor):
        tokens = prompts[None] if prompts.ndim == 1 else prompts
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [batch, pos], got shape {tuple(prompts.shape)}")
        mask = torch.ones_like(tokens) if attention_mask is None else check_attention_mask(attention_mask)
        if mask.ndim == 1:
            mask = mask[None]
        if mask.shape != tokens.shape:
            raise ValueError(f"attention_mask shape {tuple(mask.shape)} does not match tokens {tuple(tokens.shape)}")
        size = batch_size or tokens.shape[0]
        for start in range(0, tokens.shape[0], size):
            chunk_mask = mask[start : start + size].long()
            # Leading and trailing columns that are padding in every row only cost time (positions
            # count real tokens, so dropping them changes nothing); any column with a real token stays.
            used = chunk_mask.any(0).nonzero()
            first, stop = (int(used[0]), int(used[-1]) + 1) if len(used) else (0, chunk_mask.shape[1])
            yield (
                tokens[start : start + size, first:stop].to(model.cfg.device),
                chunk_mask[:, first:stop].to(model.cfg.device),
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
