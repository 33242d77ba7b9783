"""Measurements on synthetic cases with known answers: uniform attention, constant gates,
a planted massive activation, hand-built caches."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from helpers import constant_gates, make_tiny, random_tokens, zero_queries

from gated_interp.analysis import (
    compare_variants,
    first_token_attention,
    first_token_attention_by_layer,
    gate_stats,
    gate_values,
    head_averaged_patterns,
    key_importance,
    massive_activations,
    max_abs_resid,
    max_abs_resid_by_layer,
    mean_gate_by_head,
    mean_gate_score,
    sink_rate,
    uniform_first_token_attention,
)
from gated_interp.analysis.streaming import first_token_attention as streaming_first_token_attention


@pytest.fixture(scope="module")
def uniform_model(tmp_path_factory):
    model, _, _ = make_tiny(tmp_path_factory.mktemp("uniform"), gate="headwise", seed=1)
    zero_queries(model)
    return model


# ---- first-token attention and sinks, through a real model run ------------------------------
def test_first_token_attention_uniform(uniform_model):
    tokens = random_tokens(uniform_model, 2, 6)
    _, cache = uniform_model.run_with_cache(tokens)
    result = first_token_attention(cache)
    assert result.shape == (2, 4)
    uniform = uniform_first_token_attention(6)
    torch.testing.assert_close(result, torch.full((2, 4), uniform))
    torch.testing.assert_close(first_token_attention_by_layer(cache), torch.full((2,), uniform))
    assert float(first_token_attention(cache, per="model")) == pytest.approx(uniform)


def test_uniform_level_is_what_a_uniform_model_measures(uniform_model):
    # The reference level drawn on the training plot: a model whose queries are zero attends
    # uniformly, and the streaming measurement of it must land on the closed form.
    for length in (2, 7, 33):
        tokens = random_tokens(uniform_model, 2, length)
        measured = streaming_first_token_attention(uniform_model, tokens, per="model", progress=False)
        assert float(measured) == pytest.approx(uniform_first_token_attention(length), rel=1e-5)
    assert uniform_first_token_attention(2) == pytest.approx(0.5)
    assert uniform_first_token_attention(256) == pytest.approx(0.0200955, abs=1e-6)


@pytest.mark.parametrize("bad", [1, 0, -3])
def test_uniform_level_refuses_a_length_without_queries(bad):
    with pytest.raises(ValueError, match="seq_len must be an int >= 2"):
        uniform_first_token_attention(bad)


def test_first_token_attention_excludes_padding(uniform_model):
    tokens = random_tokens(uniform_model, 2, 6)
    mask = torch.tensor([[1] * 6, [1, 1, 1, 0, 0, 0]])
    _, cache = uniform_model.run_with_cache(tokens, attention_mask=mask)
    # Pooled over the 5 + 2 real queries at positions >= 1.
    expected = (5 * uniform_first_token_attention(6) + 2 * uniform_first_token_attention(3)) / 7
    torch.testing.assert_close(first_token_attention(cache, mask), torch.full((2, 4), expected))


def test_key_importance_and_sink_rate_uniform(uniform_model):
    tokens = random_tokens(uniform_model, 1, 4)
    _, cache = uniform_model.run_with_cache(tokens)
    harmonic = 1 + 1 / 2 + 1 / 3 + 1 / 4  # importance of key 0: mean over i >= 0 of 1/(i+1)
    torch.testing.assert_close(key_importance(cache), torch.full((2, 4), harmonic / 4))
    torch.testing.assert_close(key_importance(cache, key_position=1), torch.full((2, 4), (1 / 2 + 1 / 3 + 1 / 4) / 3))
    assert sink_rate(cache, eps=0.3) == 1.0  # 0.52 > 0.3 everywhere
    assert sink_rate(cache, eps=0.6) == 0.0
    assert sink_rate(cache, eps=0.3, key_position=1) == 1.0  # 0.36
    assert sink_rate(cache, eps=0.4, key_position=1) == 0.0


def test_key_importance_padding_per_sequence(uniform_model):
    tokens = random_tokens(uniform_model, 2, 4)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    _, cache = uniform_model.run_with_cache(tokens, attention_mask=mask)
    per_seq = key_importance(cache, attention_mask=mask, per_sequence=True)
    assert per_seq.shape == (2, 2, 4)
    torch.testing.assert_close(per_seq[0], torch.full((2, 4), (1 + 1 / 2 + 1 / 3 + 1 / 4) / 4))
    torch.testing.assert_close(per_seq[1], torch.full((2, 4), (1 + 1 / 2) / 2))
    # Key 2 is padding in sequence 1: left out, not counted as zero.
    assert torch.isnan(key_importance(cache, key_position=2, attention_mask=mask, per_sequence=True)[1]).all()
    torch.testing.assert_close(
        key_importance(cache, key_position=2, attention_mask=mask), torch.full((2, 4), (1 / 3 + 1 / 4) / 2)
    )


def test_missing_pattern_error_names_the_fix(uniform_model):
    tokens = random_tokens(uniform_model, 1, 4)
    _, cache = uniform_model.run_with_cache(tokens, names_filter=lambda name: "resid_post" in name)
    with pytest.raises(KeyError, match="names_filter") as info:
        first_token_attention(cache)
    assert "hook_pattern" in str(info.value) and "pattern" in str(info.value)


def test_mask_shape_mismatch_is_explained(uniform_model):
    _, cache = uniform_model.run_with_cache(random_tokens(uniform_model, 2, 4))
    with pytest.raises(ValueError, match="attention_mask has shape"):
        first_token_attention(cache, torch.ones(2, 5, dtype=torch.long))


# ---- sinks on a hand-built cache ------------------------------------------------------------
def planted_pattern_cache(n_pos: int = 5, heavy: float = 0.8, light: float = 0.1) -> dict:
    """Two layers, two heads: head 0 of layer 0 sends `heavy` of every query >= 1 to token 0,
    every other head `light`; the rest spread evenly over the other visible keys."""
    cache = {}
    for layer in range(2):
        pattern = torch.zeros(1, 2, n_pos, n_pos)
        for head in range(2):
            share = heavy if (layer, head) == (0, 0) else light
            pattern[0, head, 0, 0] = 1.0
            for q in range(1, n_pos):
                pattern[0, head, q, 0] = share
                pattern[0, head, q, 1 : q + 1] = (1 - share) / q
        cache[f"blocks.{layer}.attn.hook_pattern"] = pattern
    return cache


def test_planted_pattern_cache():
    cache = planted_pattern_cache()
    expected = torch.tensor([[0.8, 0.1], [0.1, 0.1]])
    torch.testing.assert_close(first_token_attention(cache), expected)
    # Importance counts query 0 too (it gives token 0 all its attention): (1 + 4 * share) / 5.
    torch.testing.assert_close(key_importance(cache), (1 + 4 * expected) / 5)
    assert sink_rate(cache, eps=0.3) == 0.25  # only (0, 0): 0.84 > 0.3 > 0.28
    maps = head_averaged_patterns(cache, [1, 0])
    assert maps.shape == (2, 5, 5)
    torch.testing.assert_close(maps[1, 3, 0], torch.tensor(0.45))


def test_head_averaged_patterns_crops_padding_and_checks_layers():
    cache = planted_pattern_cache()
    maps = head_averaged_patterns(cache, [0], attention_mask=torch.tensor([[1, 1, 1, 0, 0]]))
    assert maps.shape == (1, 3, 3)
    with pytest.raises(ValueError, match="0-based"):
        head_averaged_patterns(cache, [2])


# ---- gates ----------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["headwise", "elementwise"])
def constant_gate_model(request, tmp_path_factory):
    model, _, _ = make_tiny(tmp_path_factory.mktemp(request.param), gate=request.param, seed=2, qkv_bias=True)
    constant_gates(model, 0.3)
    return model


def test_gate_stats_constant_gate(constant_gate_model):
    model = constant_gate_model
    tokens = random_tokens(model, 2, 5)
    mask = torch.tensor([[1] * 5, [1, 1, 1, 0, 0]])
    _, cache = model.run_with_cache(tokens, attention_mask=mask)
    stats = gate_stats(cache, mask)
    assert list(stats[["layer", "head"]].itertuples(index=False, name=None)) == [
        (layer, h) for layer in range(2) for h in range(4)
    ]
    assert stats["mean_gate"].to_numpy() == pytest.approx(0.3)
    assert (stats["gate_frac_below_0.5"] == 1.0).all() and (stats["gate_frac_below_0.1"] == 0.0).all()
    assert stats["position_std"].to_numpy() == pytest.approx(0.0, abs=1e-6)
    assert stats["gate_pos0"].to_numpy() == pytest.approx(0.3)
    assert stats["gate_other"].to_numpy() == pytest.approx(0.3)
    assert mean_gate_score(cache, mask) == pytest.approx(0.3)
    width = model.cfg.gate_width
    assert gate_values(cache, attention_mask=mask).shape == (2 * 8 * 4 * width,)  # layers x real positions x ...
    assert gate_values(cache, layer=1, attention_mask=mask).shape == (8 * 4 * width,)
    torch.testing.assert_close(mean_gate_by_head(cache, mask), torch.full((2, 4), 0.3))


def test_gate_stats_query_dependence():
    """A planted gate cache: head 0 alternates 0 / 1 over positions, head 1 is constant 0.05."""
    gate = torch.zeros(1, 4, 2, 1)
    gate[0, :, 0, 0] = torch.tensor([1.0, 0.0, 1.0, 0.0])
    gate[0, :, 1, 0] = 0.05
    stats = gate_stats({"blocks.0.attn.hook_gate": gate})
    head0, head1 = stats.iloc[0], stats.iloc[1]
    assert head0["position_std"] == pytest.approx(0.5) and head1["position_std"] == pytest.approx(0.0)
    assert head0["gate_pos0"] == 1.0 and head0["gate_other"] == pytest.approx(1 / 3)
    assert head0["gate_frac_below_0.5"] == 0.5 and head1["gate_frac_below_0.1"] == 1.0


def test_gate_measurements_refuse_a_baseline(tmp_path):
    model, _, _ = make_tiny(tmp_path, gate="none")
    _, cache = model.run_with_cache(random_tokens(model, 1, 4))
    for measure in (gate_stats, mean_gate_score, gate_values, mean_gate_by_head):
        with pytest.raises(ValueError, match="ungated"):
            measure(cache)
    # Without the model at hand (a dict), the message still says what may be wrong.
    with pytest.raises(KeyError, match="ungated baseline"):
        gate_stats(dict(cache.cache_dict))


# ---- massive activations --------------------------------------------------------------------
def test_planted_massive_activation(tmp_path):
    model, _, _ = make_tiny(tmp_path, gate="headwise")
    tokens = random_tokens(model, 2, 5)

    def plant(resid, hook):
        resid = resid.clone()
        resid[1, 2, 7] += 5000.0
        return resid

    with model.hooks(fwd_hooks=[("blocks.0.hook_resid_post", plant)]):
        _, cache = model.run_with_cache(tokens)
    frame = massive_activations(cache)
    assert list(frame["layer"]) == [0, 1]
    for row in frame.itertuples():
        assert (row.batch, row.position, row.dim) == (1, 2, 7)  # the residual stream carries it on
        assert row.massive and row.n_massive == 1 and row.max_abs_resid > 4000 and row.ratio > 1000
    assert max_abs_resid(cache) == pytest.approx(frame["max_abs_resid"].mean())
    torch.testing.assert_close(
        max_abs_resid_by_layer(cache), torch.tensor(frame["max_abs_resid"].to_numpy(), dtype=torch.float32)
    )

    _, clean = model.run_with_cache(tokens)
    assert not massive_activations(clean)["massive"].any()


def test_massive_ignores_padding_and_needs_ratio():
    resid = torch.ones(1, 3, 4)
    resid[0, 2, 1] = -5000.0  # at a padding position
    resid[0, 1, 3] = 300.0  # > 100 but only 300 x the median
    cache = {"blocks.0.hook_resid_post": resid}
    row = massive_activations(cache, attention_mask=torch.tensor([[1, 1, 0]])).iloc[0]
    assert (row.position, row.dim, row.max_abs_resid, row.value) == (1, 3, 300.0, 300.0)
    assert row.median_abs == 1.0 and not row.massive
    assert massive_activations(cache, attention_mask=torch.tensor([[1, 1, 0]]), ratio=200.0).iloc[0].massive
    unmasked = massive_activations(cache).iloc[0]
    assert (unmasked.position, unmasked.value, unmasked.massive) == (2, -5000.0, True)


# ---- comparing variants ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_variants(tmp_path_factory):
    baseline, _, _ = make_tiny(tmp_path_factory.mktemp("base"), gate="none", seed=3)
    gated, _, _ = make_tiny(tmp_path_factory.mktemp("gated"), gate="elementwise", seed=4)
    return {"baseline": baseline, "gate_elementwise": gated}


def test_compare_variants_columns_and_values(two_variants):
    tokens = random_tokens(two_variants["baseline"], 3, 6)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4])
    frame = compare_variants(two_variants, tokens, attention_mask=mask, batch_size=None, progress=False)
    assert list(frame.index) == ["baseline", "gate_elementwise"]
    assert list(frame.columns) == [
        "first_token_attention",
        "sink_rate",
        "max_abs_resid",
        "mean_gate",
        "loss",
    ]
    assert math.isnan(frame.loc["baseline", "mean_gate"])
    assert 0 < frame.loc["gate_elementwise", "mean_gate"] < 1
    for name, model in two_variants.items():
        with torch.no_grad():
            loss = float(model(tokens, attention_mask=mask, return_type="loss"))
        assert frame.loc[name, "loss"] == pytest.approx(loss, rel=1e-5)
        _, cache = model.run_with_cache(tokens, attention_mask=mask)
        expected = float(first_token_attention(cache, mask, per="model"))
        assert frame.loc[name, "first_token_attention"] == pytest.approx(expected)
        assert frame.loc[name, "max_abs_resid"] == pytest.approx(max_abs_resid(cache, mask))
    # Batching (with its own padding per batch) changes none of the pooled numbers.
    batched = compare_variants(two_variants, tokens, attention_mask=mask, batch_size=1, progress=False)
    pd.testing.assert_frame_equal(batched, frame, rtol=1e-5)


def test_compare_variants_bootstrap_intervals(two_variants):
    tokens = random_tokens(two_variants["baseline"], 6, 7, seed=2)
    plain = compare_variants(two_variants, tokens, batch_size=4, progress=False)
    frame = compare_variants(two_variants, tokens, batch_size=4, progress=False, n_boot=300, ci=0.9, seed=1)
    for column in ("first_token_attention", "sink_rate", "max_abs_resid", "mean_gate", "loss"):
        pd.testing.assert_series_equal(frame[column], plain[column])
        for name in two_variants:
            value, lo, hi = (frame.loc[name, f"{column}{end}"] for end in ("", "_lo", "_hi"))
            if math.isnan(value):
                assert math.isnan(lo) and math.isnan(hi)  # mean gate of the baseline
            else:
                assert lo <= value + 1e-9 <= hi + 2e-9
    # The loss interval is the bootstrap of per-sequence (summed loss, predicted tokens) pairs.
    from gated_interp.analysis.bootstrap import bootstrap_ci, ratio_of_sums

    model = two_variants["gate_elementwise"]
    with torch.no_grad():
        nll = model(tokens, return_type="loss", loss_per_token=True)
    pairs = torch.stack([nll.sum(-1), torch.full((6,), 6.0)], dim=-1).double()
    lo, hi = bootstrap_ci(pairs, ratio_of_sums, n_boot=300, ci=0.9, seed=1)
    assert frame.loc["gate_elementwise", "loss_lo"] == pytest.approx(float(lo), rel=1e-5)
    assert frame.loc["gate_elementwise", "loss_hi"] == pytest.approx(float(hi), rel=1e-5)
    assert (frame["loss_hi"] > frame["loss_lo"]).all()


def test_compare_variants_with_string_prompts(two_variants, tmp_path):
    from gated_interp.train.tokenizer import train_bpe_tokenizer

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"the cat saw {i} birds in the garden." for i in range(50)))
    tokenizer = train_bpe_tokenizer(corpus, vocab_size=300)
    model, _, _ = make_tiny(tmp_path / "tok", gate="headwise", vocab_size=len(tokenizer))
    model.tokenizer = tokenizer
    prompts = ["the cat saw birds in the garden.", "the cat", "birds in the garden saw the cat."]
    frame = compare_variants({"headwise": model}, prompts, batch_size=2, progress=False)
    tokens, mask = model._tokenize(prompts)
    with torch.no_grad():
        loss = float(model(tokens, attention_mask=mask, return_type="loss"))
    assert frame.loc["headwise", "loss"] == pytest.approx(loss)
    _, cache = model.run_with_cache(tokens, attention_mask=mask)
    assert frame.loc["headwise", "mean_gate"] == pytest.approx(mean_gate_score(cache, mask), rel=1e-5)


def test_measure_variant_is_a_row_of_compare_variants(two_variants):
    from gated_interp.analysis import measure_variant

    tokens = random_tokens(two_variants["baseline"], 2, 6)
    frame = compare_variants(two_variants, tokens, progress=False)
    for name, model in two_variants.items():
        row = measure_variant(model, tokens, progress=False)
        assert list(row) == list(frame.columns)
        assert row == pytest.approx(frame.loc[name].to_dict(), nan_ok=True)


def test_retired_names_are_gone():
    # One name per quantity: the paper's F-Attn and M-Act are first_token_attention and max_abs_resid.
    import gated_interp.analysis as analysis

    for retired in ("m_act", "f_attn", "max_activation_by_layer"):
        assert not hasattr(analysis, retired)
    with pytest.raises(TypeError):
        compare_variants({}, torch.zeros(1, 2, dtype=torch.long), method="cache")
