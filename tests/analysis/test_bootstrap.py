"""Bootstrap intervals over sequences, and the one Metric type (TransformerLens-style metric(logits))."""

from __future__ import annotations

import math
import random

import pytest
import torch

from gated_interp.analysis.bootstrap import bootstrap_ci, bootstrap_samples, ratio_of_sums
from gated_interp.metrics import call_metric


def test_constant_values_give_a_point_interval():
    lo, hi = bootstrap_ci(torch.full((10, 3), 2.5))
    assert torch.equal(lo, torch.full((3,), 2.5, dtype=lo.dtype)) and torch.equal(hi, lo)


def test_interval_of_a_mean_matches_the_normal_theory_width():
    # 400 draws of N(0, 1): the 95% interval of the mean is about +-1.96 / sqrt(400) around the mean.
    values = torch.randn(400, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    lo, hi = bootstrap_ci(values, n_boot=2000)
    assert float(lo) < float(values.mean()) < float(hi)
    assert float(hi - lo) == pytest.approx(2 * 1.96 / math.sqrt(400), rel=0.15)


def test_resamples_match_an_independent_loop_and_reproduce():
    values = torch.tensor([[1.0, 2.0], [3.0, 1.0], [0.0, 4.0], [5.0, 1.0]], dtype=torch.float64)
    samples = bootstrap_samples(values, ratio_of_sums, n_boot=50, seed=3)
    index = torch.randint(0, 4, (50, 4), generator=torch.Generator().manual_seed(3))
    expected = [sum(float(values[i, 0]) for i in rows) / sum(float(values[i, 1]) for i in rows) for rows in index]
    assert samples.tolist() == pytest.approx(expected)
    assert torch.equal(bootstrap_ci(values, ratio_of_sums, seed=3)[0], bootstrap_ci(values, ratio_of_sums, seed=3)[0])
    # Percentiles of the resamples, computed by hand (linear interpolation, as numpy's default).
    ordered = sorted(random.Random(0).sample(expected, len(expected)))
    position = 0.025 * (len(ordered) - 1)
    low = ordered[int(position)] + (ordered[int(position) + 1] - ordered[int(position)]) * (position % 1)
    lo, _ = bootstrap_ci(values, ratio_of_sums, n_boot=50, seed=3)
    assert float(lo) == pytest.approx(low)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="at least 2 sequences"):
        bootstrap_ci(torch.ones(1))
    with pytest.raises(ValueError, match="ci must be"):
        bootstrap_ci(torch.ones(5), ci=95.0)


def test_call_metric_takes_transformer_lens_style_and_token_aware_metrics():
    logits = torch.randn(2, 3, 5)
    tokens = torch.zeros(2, 3, dtype=torch.long)
    mask = torch.ones(2, 3, dtype=torch.long)
    assert float(call_metric(lambda lg: lg.sum(), logits, tokens, mask)) == pytest.approx(float(logits.sum()))
    assert call_metric(lambda lg, t, m: float(m.sum()), logits, tokens, mask) == 6
    with pytest.raises(TypeError, match="two arguments"):
        call_metric(lambda lg, t: 0.0, logits, tokens, mask)
