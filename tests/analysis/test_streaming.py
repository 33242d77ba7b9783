"""Streaming measurements (from a model and tokens, one layer at a time, attention to a key from
queries and keys without the pattern) equal the cache-based functions on a full run_with_cache."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from helpers import make_tiny, random_tokens, zero_queries

from gated_interp import analysis
from gated_interp.analysis import streaming


@pytest.fixture(scope="module", params=["none", "headwise", "elementwise"])
def model(request, tmp_path_factory):
    # Grouped-query attention (4 query heads over 2 kv heads), q/k norm, three layers.
    model, _, _ = make_tiny(tmp_path_factory.mktemp(request.param), gate=request.param, seed=3, num_hidden_layers=3)
    return model


@pytest.fixture(scope="module")
def batch(model):
    tokens = random_tokens(model, 3, 9, seed=5)
    mask = torch.tensor([[1] * 9, [1] * 6 + [0] * 3, [1] * 2 + [0] * 7])
    _, cache = model.run_with_cache(tokens, attention_mask=mask)
    return tokens, mask, cache


def test_attention_to_keys_matches_the_softmax_pattern():
    # Independent reference: a plain softmax over masked scores, 16 query heads over 8 kv heads.
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 11, 16, 8, generator=gen), torch.randn(2, 11, 8, 8, generator=gen)
    real = torch.tensor([[True] * 11, [True] * 7 + [False] * 4])
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k.repeat_interleave(2, dim=2)) / 8**0.5
    causal = torch.ones(11, 11, dtype=torch.bool).tril()
    visible = causal & (real[:, None, None, :] | torch.eye(11, dtype=torch.bool))
    pattern = scores.masked_fill(~visible, float("-inf")).softmax(-1)
    for chunk in (1, 3, 11):
        weights = streaming.attention_to_keys(q, k, [0, 4], real, chunk_size=chunk)
        torch.testing.assert_close(weights[0], pattern[..., 0], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(weights[1], pattern[..., 4], atol=1e-6, rtol=1e-5)
    # Right padding (and none): the fused kernel over one-hot values. Padding queries are not
    # compared: their rows differ from the model's (which lets them read themselves) and are unused.
    weights = streaming.attention_to_keys(q, k, [0, 4], real)
    for index, key in enumerate([0, 4]):
        fused = weights[index].transpose(1, 2)[real]  # [real query, head]
        torch.testing.assert_close(fused, pattern[..., key].transpose(1, 2)[real], atol=1e-6, rtol=1e-5)
    # Left padding: the chunked log-sum-exp path, every query as the model computes it.
    left = real.flip(-1)
    visible = causal & (left[:, None, None, :] | torch.eye(11, dtype=torch.bool))
    pattern = scores.masked_fill(~visible, float("-inf")).softmax(-1)
    weights = streaming.attention_to_keys(q, k, [0, 6], left)
    torch.testing.assert_close(weights[0], pattern[..., 0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(weights[1], pattern[..., 6], atol=1e-6, rtol=1e-5)


def test_first_token_attention_is_uniform_with_zero_queries(tmp_path):
    model, _, _ = make_tiny(tmp_path, gate="headwise", seed=1)
    zero_queries(model)
    expected = sum(1 / (i + 1) for i in range(1, 6)) / 5
    result = streaming.first_token_attention(model, random_tokens(model, 2, 6))
    torch.testing.assert_close(result, torch.full((2, 4), expected))


def test_measure_equals_the_cache_based_functions(model, batch):
    tokens, mask, cache = batch
    m = streaming.measure(model, tokens, mask, batch_size=2, progress=False)
    atol = 1e-5
    torch.testing.assert_close(
        m.first_token_attention("head"), analysis.first_token_attention(cache, mask), atol=atol, rtol=0
    )
    torch.testing.assert_close(
        m.key_importance, analysis.key_importance(cache, 0, mask, per_sequence=True), atol=atol, rtol=0, equal_nan=True
    )
    assert m.sink_rate() == pytest.approx(analysis.sink_rate(cache, 0.3, 0, mask))
    torch.testing.assert_close(
        m.max_abs_resid_by_layer(), analysis.max_abs_resid_by_layer(cache, mask), atol=atol, rtol=1e-6
    )
    with torch.no_grad():
        expected_loss = float(model(tokens, attention_mask=mask, return_type="loss"))
    assert m.loss() == pytest.approx(expected_loss, abs=1e-5)
    summary = m.summary()
    assert list(summary) == list(streaming.QUANTITIES)
    if model.cfg.gate == "none":
        assert pd.isna(summary["mean_gate"])
    else:
        assert summary["mean_gate"] == pytest.approx(analysis.mean_gate_score(cache, mask), abs=1e-6)
        by_layer = analysis.mean_gate_by_head(cache, mask).mean(-1)
        torch.testing.assert_close(m.mean_gate_by_layer(), by_layer, atol=1e-6, rtol=0)
        stats = analysis.gate_stats(cache, mask)
        assert m.gate_frac_below(0.1) == pytest.approx(float(stats["gate_frac_below_0.1"].mean()), abs=1e-6)
        assert m.gate_frac_below(0.5) == pytest.approx(float(stats["gate_frac_below_0.5"].mean()), abs=1e-6)
        assert m.as_dict()["gate_frac_below_0.1"] == m.gate_frac_below(0.1)


def test_key_importance_and_sink_rate_of_a_later_key(model, batch):
    tokens, mask, cache = batch
    per_seq = streaming.key_importance(model, tokens, 3, mask, per_sequence=True, progress=False)
    torch.testing.assert_close(
        per_seq, analysis.key_importance(cache, 3, mask, per_sequence=True), atol=1e-5, rtol=0, equal_nan=True
    )
    assert streaming.sink_rate(model, tokens, 0.1, 3, mask, progress=False) == pytest.approx(
        analysis.sink_rate(cache, 0.1, 3, mask)
    )


def test_tables_match_the_cache_based_tables(model, batch):
    tokens, mask, cache = batch
    pd.testing.assert_frame_equal(
        streaming.massive_activations(model, tokens, mask, threshold=1.0, ratio=2.0, progress=False),
        analysis.massive_activations(cache, mask, threshold=1.0, ratio=2.0),
        atol=1e-5,
    )
    if model.cfg.gate == "none":
        with pytest.raises(ValueError, match="ungated"):
            streaming.gate_stats(model, tokens, mask)
    else:
        pd.testing.assert_frame_equal(
            streaming.gate_stats(model, tokens, mask, progress=False), analysis.gate_stats(cache, mask), atol=1e-5
        )


def test_streaming_keeps_the_fused_attention_path(model, batch):
    # No pattern hook is attached: the attention module would otherwise take its explicit path.
    tokens, mask, _ = batch
    seen = []
    original = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        seen.append(True)
        return original(*args, **kwargs)

    torch.nn.functional.scaled_dot_product_attention = spy
    try:
        streaming.measure(model, tokens, mask, progress=False)
    finally:
        torch.nn.functional.scaled_dot_product_attention = original
    # Per layer: the model's own attention, and the one-hot-value run that gives attention to token 0
    # (the explicit path, taken when a pattern hook is attached, would not call the kernel).
    assert len(seen) == 2 * model.cfg.n_layers


def test_bootstrap_interval_contains_the_estimate(model, batch):
    tokens, mask, _ = batch
    m = streaming.measure(model, tokens, mask, progress=False)
    intervals = m.bootstrap(n_boot=200)
    for name, value in m.summary().items():
        lo, hi = intervals[name]
        if pd.isna(value):
            assert pd.isna(lo) and pd.isna(hi)
        else:
            assert lo <= value + 1e-9 and value - 1e-9 <= hi


def test_long_inputs_show_a_progress_bar_per_layer(model, monkeypatch, capsys):
    """On a terminal by default, in a log only when asked, never with progress=False."""
    monkeypatch.setattr(streaming, "LONG_CONTEXT", 8)
    streaming.measure(model, random_tokens(model, 1, 8), desc="probe")
    assert "layers" not in capsys.readouterr().err  # captured output is no terminal
    streaming.measure(model, random_tokens(model, 1, 8), desc="probe", progress=True)
    assert "probe layers" in capsys.readouterr().err
    monkeypatch.setattr("gated_interp._progress._stderr_is_terminal", lambda: True)
    streaming.measure(model, random_tokens(model, 1, 8), desc="probe")
    assert "probe layers" in capsys.readouterr().err
    streaming.measure(model, random_tokens(model, 1, 8), progress=False)
    assert "layers" not in capsys.readouterr().err
