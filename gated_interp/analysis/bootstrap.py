"""Percentile-bootstrap confidence intervals over sequences.

Every measurement here is a statistic of per-sequence values (a mean loss, a pooled attention
weight, a fraction of heads). Resampling the sequences with replacement and recomputing the
statistic gives its sampling spread: the interval says how much the number would move on another
draw of the same number of sequences from the same text. It says nothing about training seeds.

    lo, hi = bootstrap_ci(per_sequence_loss)                              # mean over sequences
    lo, hi = bootstrap_ci(sums_and_counts, statistic=ratio_of_sums)       # pooled mean

`statistic` takes the resampled values `[seq, ...]` (rows drawn with replacement) and returns a
tensor (any shape); `lo` and `hi` have that shape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

Statistic = Callable[[Tensor], Tensor]
# Resamples whose indices are drawn at once (memory: RESAMPLE_CHUNK x seq int64s).
RESAMPLE_CHUNK = 256


def mean(values: Float[Tensor, "seq *rest"]) -> Float[Tensor, "*rest"]:
    """Mean over sequences (the default statistic)."""
    return values.mean(dim=0)


def ratio_of_sums(values: Float[Tensor, "seq *rest 2"]) -> Float[Tensor, "*rest"]:
    """`sum(values[..., 0]) / sum(values[..., 1])` over sequences: a pooled mean when each
    sequence contributes a sum and a count (e.g. summed loss and number of predicted tokens)."""
    return values[..., 0].sum(dim=0) / values[..., 1].sum(dim=0)


def bootstrap_samples(
    per_sequence_values: Any,
    statistic: Statistic = mean,
    n_boot: int = 1000,
    seed: int = 0,
) -> Float[Tensor, "boot *rest"]:
    """`statistic` of `n_boot` resamples (sequences drawn with replacement): `[n_boot, *rest]`."""
    values = torch.as_tensor(per_sequence_values)
    if not values.is_floating_point():
        values = values.double()
    if values.ndim == 0 or values.shape[0] < 2:
        raise ValueError(
            f"bootstrap needs per-sequence values [seq, ...] with at least 2 sequences, got shape {tuple(values.shape)}"
        )
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot must be an int >= 1, got {n_boot!r}")
    generator = torch.Generator().manual_seed(seed)
    n = values.shape[0]
    # The resample indices are drawn RESAMPLE_CHUNK resamples at a time: all at once they are
    # n_boot x n int64s (8 GB for 200,000 resamples of 5,000 values).
    samples = []
    for start in range(0, n_boot, RESAMPLE_CHUNK):
        index = torch.randint(0, n, (min(RESAMPLE_CHUNK, n_boot - start), n), generator=generator)
        samples += [torch.as_tensor(statistic(values[rows])) for rows in index.to(values.device)]
    return torch.stack(samples)


def bootstrap_ci(
    per_sequence_values: Any,
    statistic: Statistic = mean,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Percentile-bootstrap interval `(lo, hi)` of `statistic` over sequences.

    `per_sequence_values` is `[seq, ...]` (a tensor or anything `torch.as_tensor` takes); each
    resample draws `seq` rows with replacement (fixed by `seed`, so results reproduce). Returns two
    tensors of the statistic's shape; NaN where the statistic is NaN in any resample.
    """
    if not 0 < ci < 1:
        raise ValueError(f"ci must be a coverage between 0 and 1 (e.g. 0.95), got {ci}")
    samples = bootstrap_samples(per_sequence_values, statistic, n_boot, seed)
    alpha = (1 - ci) / 2
    quantiles = torch.tensor([alpha, 1 - alpha], dtype=samples.dtype, device=samples.device)
    # torch.quantile propagates NaN, which is what a missing measurement should give.
    lo, hi = torch.quantile(samples.reshape(n_boot, -1), quantiles, dim=0).reshape(2, *samples.shape[1:])
    return lo, hi
