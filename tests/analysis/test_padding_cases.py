"""The cases of issue 24, one test each: left padding, masks with holes or values other than 0/1,
and parameters outside their range. Each number must equal what the sequences give alone, or the
input is refused with an error naming it."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import make_tiny, random_tokens, without_shape_checks, write_checkpoint
from reference import random_released_checkpoint, tiny_config

from gated_interp import analysis, load_hooked
from gated_interp.analysis import bootstrap, interventions, streaming
from gated_interp.loading import CheckpointError

LENGTHS = (7, 4, 2)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    model, _, _ = make_tiny(tmp_path_factory.mktemp("cases"), gate="headwise", seed=6, num_hidden_layers=2)
    return model


def batch(model, side: str):
    """Three sequences of LENGTHS tokens, padded on `side` with token 0: (tokens, mask)."""
    rows = [random_tokens(model, 1, n, seed=n)[0] for n in LENGTHS]
    width = max(LENGTHS)
    tokens = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        where = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        tokens[i, where], mask[i, where] = row, 1
    return tokens, mask


@pytest.fixture(scope="module")
def runs(model):
    """{side: (tokens, mask, cache)} for the same three sequences padded on each side."""
    result = {}
    for side in ("left", "right"):
        tokens, mask = batch(model, side)
        result[side] = (tokens, mask, model.run_with_cache(tokens, attention_mask=mask)[1])
    return result


def test_left_padding_gives_the_right_padded_tables(model, runs):
    (_, lm, left), (_, rm, right) = runs["left"], runs["right"]
    torch.testing.assert_close(analysis.first_token_attention(left, lm), analysis.first_token_attention(right, rm))
    gates_left, gates_right = analysis.gate_stats(left, lm), analysis.gate_stats(right, rm)
    torch.testing.assert_close(torch.tensor(gates_left.gate_pos0.values), torch.tensor(gates_right.gate_pos0.values))
    quiet_left = analysis.head_quietness(left, lm).drop(columns=["quiet", "label"]).to_numpy()
    quiet_right = analysis.head_quietness(right, rm).drop(columns=["quiet", "label"]).to_numpy()
    torch.testing.assert_close(torch.tensor(quiet_left), torch.tensor(quiet_right))
    for i in range(len(LENGTHS)):
        maps = analysis.head_averaged_patterns(left, [1], batch_index=i, attention_mask=lm)
        assert maps.shape == (1, LENGTHS[i], LENGTHS[i])
        torch.testing.assert_close(maps, analysis.head_averaged_patterns(right, [1], batch_index=i, attention_mask=rm))


def test_compare_variants_and_measure_on_left_padding(model, runs):
    (lt, lm, _), (rt, rm, _) = runs["left"], runs["right"]
    left = analysis.compare_variants({"m": model}, lt, attention_mask=lm, progress=False)
    right = analysis.compare_variants({"m": model}, rt, attention_mask=rm, progress=False)
    torch.testing.assert_close(torch.tensor(left.to_numpy()), torch.tensor(right.to_numpy()))
    # One prompt left-padded by 4 keeps its last tokens: the loss it gives alone.
    tokens = random_tokens(model, 1, 6, seed=1)
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), tokens], 1)
    mask = torch.cat([torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 6, dtype=torch.long)], 1)
    alone = model(tokens, return_type="loss").item()
    assert streaming.measure(model, padded, mask).loss() == pytest.approx(alone, rel=1e-5)


def test_measure_keeps_the_last_column_of_a_mask_with_a_hole(model):
    tokens = random_tokens(model, 1, 6, seed=2)
    mask = torch.ones_like(tokens)
    mask[0, 2] = 0
    expected = model(tokens, attention_mask=mask, return_type="loss").item()
    assert streaming.measure(model, tokens, mask).loss() == pytest.approx(expected, rel=1e-5)


def test_masks_must_be_zero_or_one(model):
    tokens = random_tokens(model, 1, 5)
    with pytest.raises(ValueError, match="only 0 .padding. and 1"):
        model(tokens, attention_mask=torch.full_like(tokens, 2))
    with without_shape_checks(), pytest.raises(ValueError, match="dtype torch.float32"):
        model(tokens, attention_mask=torch.ones(1, 5))
    _, cache = model.run_with_cache(tokens)
    with pytest.raises(ValueError, match="only 0 .padding. and 1"):
        analysis.first_token_attention(cache, torch.full_like(tokens, 2))
    with pytest.raises(ValueError, match="only 0 .padding. and 1"):
        streaming.measure(model, tokens, torch.full_like(tokens, 2))
    with without_shape_checks():  # bool masks are accepted (the annotations say Int)
        assert model(tokens, attention_mask=torch.ones_like(tokens, dtype=torch.bool)).shape[:2] == (1, 5)


def test_a_bool_tensor_is_not_taken_for_tokens(model):
    with without_shape_checks(), pytest.raises(ValueError, match="bool tensor .* attention_mask="):
        model(torch.tensor([[True, False, True]]))


@pytest.mark.parametrize("eps", [float("nan"), -1.0, 0.0, 1.0, 2.0])
def test_sink_rate_eps_lies_between_0_and_1(model, runs, eps):
    _, mask, cache = runs["right"]
    with pytest.raises(ValueError, match="eps must be a number strictly between 0 and 1"):
        analysis.sink_rate(cache, eps=eps, attention_mask=mask)
    with pytest.raises(ValueError, match="eps must be a number strictly between 0 and 1"):
        streaming.sink_rate(model, random_tokens(model, 1, 4), eps=eps)


def test_remove_sink_refuses_a_negative_position(model):
    with pytest.raises(ValueError, match="key_position must be an int >= 0"):
        interventions.remove_sink(model, key_position=-1)


@pytest.mark.parametrize("value", [2.5, -0.1, float("nan"), torch.tensor([0.5, 1.5])])
def test_fix_gates_takes_gate_scores_only(model, value):
    with pytest.raises(ValueError, match=r"gate score in \[0, 1\]"):
        interventions.fix_gates(model, value)
    assert interventions.fix_gates(model, 0.0) and interventions.fix_gates(model, torch.tensor([0.2, 1.0]))


def test_zero_ablate_heads_index_layers_and_heads_alike(model):
    """Negative layers and heads both count from the last, as in Python and TransformerLens."""
    n_heads = model.cfg.n_heads
    tokens = random_tokens(model, 2, 5, seed=4)
    last = model.run_with_hooks(tokens, fwd_hooks=interventions.zero_ablate_heads(model, [(1, n_heads - 1)]))
    negative = model.run_with_hooks(tokens, fwd_hooks=interventions.zero_ablate_heads(model, [(-1, -1)]))
    torch.testing.assert_close(negative, last, rtol=0, atol=0)
    assert not torch.equal(last, model(tokens))
    for bad in [(0, n_heads), (0, -n_heads - 1), (2, 0), (-3, 0)]:
        with pytest.raises(ValueError, match=r"out of range: the model has \d+ (layers|heads per layer)"):
            interventions.zero_ablate_heads(model, [bad])


def test_gate_values_layers_count_from_the_end_and_are_checked(runs):
    _, mask, cache = runs["right"]
    torch.testing.assert_close(analysis.gate_values(cache, -1, mask), analysis.gate_values(cache, 1, mask))
    with pytest.raises(ValueError, match="layer 7 is out of range .* 2 layers, 0..1"):
        analysis.gate_values(cache, 7)


def test_head_quietness_on_a_cache_without_batch_dimension(model):
    tokens = random_tokens(model, 1, 6, seed=3)
    _, flat = model.run_with_cache(tokens, remove_batch_dim=True)
    _, full = model.run_with_cache(tokens)
    expected = analysis.head_quietness(full).drop(columns="quiet")
    assert analysis.head_quietness(flat).drop(columns="quiet").equals(expected)


@pytest.mark.parametrize("n_boot", [10.5, -1, True])
def test_compare_variants_n_boot_is_a_count(model, n_boot):
    with without_shape_checks(), pytest.raises(ValueError, match="n_boot must be an int >= 0"):
        analysis.compare_variants({"m": model}, random_tokens(model, 2, 4), n_boot=n_boot, progress=False)


def test_bootstrap_draws_resamples_in_chunks(monkeypatch):
    drawn = []
    randint = torch.randint

    def recording(*args, **kwargs):
        drawn.append(args[2])
        return randint(*args, **kwargs)

    values = torch.arange(50.0)
    expected = bootstrap.bootstrap_samples(values, n_boot=1000)
    monkeypatch.setattr(torch, "randint", recording)
    samples = bootstrap.bootstrap_samples(values, n_boot=1000)
    assert max(rows for rows, _ in drawn) <= bootstrap.RESAMPLE_CHUNK and sum(r for r, _ in drawn) == 1000
    torch.testing.assert_close(samples, expected)
    assert not math.isnan(float(samples.mean()))


def test_a_tokenizer_larger_than_the_vocabulary_is_refused_at_load(tmp_path, bpe_tokenizer):
    from gated_interp.train.tokenizer import save_tokenizer

    config = tiny_config(vocab_size=len(bpe_tokenizer) - 8)
    write_checkpoint(tmp_path, config, random_released_checkpoint(config))
    save_tokenizer(bpe_tokenizer, tmp_path)
    with pytest.raises(
        CheckpointError, match=f"tokenizer has {len(bpe_tokenizer)} tokens .* vocab_size is {len(bpe_tokenizer) - 8}"
    ):
        load_hooked(str(tmp_path), device="cpu", progress=False)


@pytest.mark.parametrize("side", ["left", "right"])
def test_a_bool_mask_gives_what_the_integer_mask_gives(model, runs, side):
    """Masks may be bool or 0/1 integers (gated_interp.masks.Mask): under the shape checker too,
    through forward, run_with_cache and every table that takes a mask."""
    tokens, mask, cache = runs[side]
    flags = mask.bool()
    torch.testing.assert_close(model(tokens, attention_mask=flags), model(tokens, attention_mask=mask))
    loss = model(tokens, attention_mask=flags, return_type="loss")
    torch.testing.assert_close(loss, model(tokens, attention_mask=mask, return_type="loss"))
    _, bool_cache = model.run_with_cache(tokens, attention_mask=flags)
    torch.testing.assert_close(bool_cache["pattern", 1], cache["pattern", 1])
    same = [
        (analysis.first_token_attention, {}),
        (analysis.sink_rate, {}),
        (analysis.key_importance, {}),
        (analysis.max_abs_resid, {}),
        (analysis.mean_gate_score, {}),
        (analysis.gate_values, {"layer": 1}),
    ]
    for table, kwargs in same:
        expected = torch.as_tensor(table(cache, attention_mask=mask, **kwargs))
        torch.testing.assert_close(torch.as_tensor(table(cache, attention_mask=flags, **kwargs)), expected)
    for table in (analysis.gate_stats, analysis.head_quietness, analysis.massive_activations):
        assert table(cache, attention_mask=flags).equals(table(cache, attention_mask=mask)), table.__name__
    maps = analysis.head_averaged_patterns(cache, [1], batch_index=1, attention_mask=flags)
    torch.testing.assert_close(maps, analysis.head_averaged_patterns(cache, [1], batch_index=1, attention_mask=mask))
    measured = streaming.measure(model, tokens, flags, progress=False).summary()
    assert measured == pytest.approx(streaming.measure(model, tokens, mask, progress=False).summary(), nan_ok=True)
    compared = analysis.compare_variants({"m": model}, tokens, attention_mask=flags, progress=False)
    assert compared.equals(analysis.compare_variants({"m": model}, tokens, attention_mask=mask, progress=False))
