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

from collections.abc import Callable, Iterator
from typing import Any

import torch
from jaxtyping import Float, Int
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
    samples = []
    for index in resample_indices(values.shape[0], n_boot, seed):
        samples += [torch.as_tensor(statistic(values[rows])) for rows in index.to(values.device)]
    return torch.stack(samples)


def resample_indices(n: int, n_boot: int, seed: int = 0) -> Iterator[Int[Tensor, "boot seq"]]:
    """The rows each resample draws, `[chunk, n]` for chunks of RESAMPLE_CHUNK resamples: the one
    random stream of every bootstrap here (the same draws as one `[n_boot, n]` tensor, which for
    200,000 resamples of 5,000 values would be 8 GB of int64s)."""
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot must be an int >= 1, got {n_boot!r}")
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, n_boot, RESAMPLE_CHUNK):
        yield torch.randint(0, n, (min(RESAMPLE_CHUNK, n_boot - start), n), generator=generator)


def resample_counts(n: int, n_boot: int, seed: int = 0) -> Iterator[Float[Tensor, "boot seq"]]:
    """How many times each resample of `resample_indices` draws each row (float64, exact): a
    statistic that is a sum over rows is then one matrix product for a whole chunk of resamples."""
    for index in resample_indices(n, n_boot, seed):
        yield torch.zeros(index.shape, dtype=torch.float64).scatter_add_(1, index, torch.ones(index.shape).double())


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
