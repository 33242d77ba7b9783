"""Bootstrap intervals over sequences, and the one Metric type (TransformerLens-style metric(logits))."""

from __future__ import annotations

import math
import random

import pytest
import torch

from gated_interp.analysis.bootstrap import bootstrap_ci, bootstrap_samples, ratio_of_sums
from gated_interp.analysis.measurement import QUANTITIES
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


def _measurement(gated: bool, n: int = 9):
    """A Measurement of `n` random sequences, sequence 0 without a query after the first token and
    sequence 1 without a real token at the key position (NaN importance)."""
    from gated_interp.analysis.measurement import Measurement

    g = torch.Generator().manual_seed(7)
    n_real = torch.randint(3, 20, (n,), generator=g).float()
    n_real[0] = 1
    importance = torch.rand(n, 2, 3, generator=g)
    importance[1] = float("nan")
    gate = dict(gate_sum=torch.rand(n, 2, 3, generator=g) * 5, n_gate=n_real) if gated else {}
    return Measurement(
        gated=gated,
        key_position=0,
        eps=0.3,
        n_real=n_real,
        loss_sum=torch.rand(n, generator=g) * 30,
        n_predicted=n_real - 1,
        first_token_sum=torch.rand(n, 2, 3, generator=g) * 4,
        n_queries=n_real - 1,
        key_importance=importance,
        max_abs_resid=torch.rand(n, 2, generator=g) * 50,
        **gate,
    )


@pytest.mark.parametrize("gated", [True, False])
def test_chunked_resamples_give_each_resamples_summary(gated):
    """`Measurement.bootstrap` pools a chunk of resamples at once: each resample's quantities are
    what `select(rows).summary()` gives for its rows (the same random stream), NaN where it has
    nothing to pool (only sequence 0 or 1 drawn), to float32 rounding."""
    from gated_interp.analysis.bootstrap import resample_counts, resample_indices

    measurement = _measurement(gated)
    index = torch.cat(list(resample_indices(measurement.n_sequences, 600, seed=2)))
    index[0], index[1] = 0, 1  # a resample without a later query, one without a real key
    counts = torch.zeros(index.shape, dtype=torch.float64).scatter_add_(1, index, torch.ones(index.shape).double())
    expected = []
    for rows in index:
        picked, row = measurement.select(rows), []
        for name in QUANTITIES:
            try:
                row.append(picked.summary_of(name))
            except ValueError:
                row.append(float("nan"))
        expected.append(row)
    expected = torch.tensor(expected, dtype=torch.float64)
    assert expected[:2].isnan().any() and not expected[2:, :3].isnan().any()
    torch.testing.assert_close(measurement.resampled_summaries(counts), expected, rtol=1e-6, atol=1e-7, equal_nan=True)
    # The counts come from the same draws, RESAMPLE_CHUNK resamples at a time.
    chunks = list(resample_counts(measurement.n_sequences, 600, seed=2))
    torch.testing.assert_close(torch.cat(chunks)[2:], counts[2:], rtol=0, atol=0)
    assert set(measurement.bootstrap(600, seed=2)) == set(QUANTITIES)
