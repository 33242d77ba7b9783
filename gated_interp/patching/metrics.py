"""Standard patching metrics: functions `metric(logits) -> scalar tensor`.

Every sweep in `gated_interp.patching` calls a metric on the logits of ONE patched copy of the
corrupted batch, `[n_prompts, pos, d_vocab]`, exactly as `transformer_lens.patching` calls it on a
whole unpatched-size batch. So a metric written for TransformerLens works here unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from gated_interp.metrics import Metric  # the one metric type, shared with interventions


def _as_index(tokens: int | Sequence[int] | Tensor, n: int, device: torch.device, name: str) -> Int[Tensor, "batch"]:
    """Answer ids broadcast to one per prompt."""
    ids = torch.as_tensor(tokens, device=device, dtype=torch.long)
    if ids.ndim == 0:
        ids = ids.expand(n)
    if ids.shape != (n,):
        raise ValueError(f"{name} must be one token id or one per prompt ({n}), got shape {tuple(ids.shape)}")
    return ids


def logit_diff(
    logits: Float[Tensor, "batch pos d_vocab"],
    answer_tokens: int | Sequence[int] | Int[Tensor, "batch"],
    wrong_tokens: int | Sequence[int] | Int[Tensor, "batch"],
    position: int | Sequence[int] | Int[Tensor, "batch"] = -1,
) -> Float[Tensor, ""]:
    """Mean over the batch of `logit[answer] - logit[wrong]` at `position`.

    `position` may be one index for all prompts or one per prompt (e.g. the last real token of
    right-padded prompts). Bind the answers with `functools.partial` to get a metric.
    """
    if logits.ndim != 3:
        raise ValueError(f"logits must be [batch, pos, d_vocab], got shape {tuple(logits.shape)}")
    n = logits.shape[0]
    rows = torch.arange(n, device=logits.device)
    pos = _as_index(position, n, logits.device, "position")
    final = logits[rows, pos]  # [batch, d_vocab]
    answer = _as_index(answer_tokens, n, logits.device, "answer_tokens")
    wrong = _as_index(wrong_tokens, n, logits.device, "wrong_tokens")
    return (final[rows, answer] - final[rows, wrong]).mean()


def normalized_metric(metric: Metric, clean_value: float | Tensor, corrupted_value: float | Tensor) -> Metric:
    """`metric` rescaled so that the corrupted run scores 0 and the clean run scores 1."""
    clean, corrupted = float(clean_value), float(corrupted_value)
    if clean == corrupted:
        # Every patch would divide by zero: the prompts do not separate clean from corrupted.
        raise ValueError(f"clean and corrupted metric values are equal ({clean}); nothing to normalise against")
    scale = clean - corrupted

    def normalized(logits: Float[Tensor, "batch pos d_vocab"]) -> Float[Tensor, ""]:
        return (metric(logits) - corrupted) / scale

    return normalized


def metric_scalar(value: Tensor | float) -> Tensor:
    """A metric's value as a 0-d tensor; a per-prompt (non-scalar) value is an error."""
    value = torch.as_tensor(value)
    if value.numel() != 1:
        raise ValueError(
            f"the metric must return a scalar for the batch it is given, got shape {tuple(value.shape)}; "
            "average over prompts inside the metric (e.g. logit_diff does)"
        )
    return value.reshape(())
