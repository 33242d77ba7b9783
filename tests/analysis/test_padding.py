"""Every batch shape measures what each sequence gives alone: left padding, right padding, holes in
the mask, extra padding columns, any batch order. "The first token" and "key position k" are each
sequence's real tokens number 0 and k (`analysis.reductions.FIRST_TOKEN`), as the model counts
its positions."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from helpers import make_tiny, random_tokens
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from gated_interp import analysis
from gated_interp.analysis import streaming

ATOL = 2e-5


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    model, _, _ = make_tiny(tmp_path_factory.mktemp("padding"), gate="headwise", seed=4, num_hidden_layers=2)
    return model


def padded(rows: list[torch.Tensor], left: list[int], right: list[int], holes: list[int], fill: int = 3):
    """Tokens and mask holding each of `rows` with `left[i]` pad columns before it, `right[i]` after
    it (more added to even the lengths) and a padding column inserted after its real token
    `holes[i]` (-1: none). Padding slots hold the token `fill`, which must not matter."""
    built = []
    for row, before, after, hole in zip(rows, left, right, holes):
        tokens = [fill] * before
        real = [0] * before
        for i, token in enumerate(row.tolist()):
            tokens.append(token)
            real.append(1)
            if i == hole:
                tokens.append(fill)
                real.append(0)
        built.append((tokens + [fill] * after, real + [0] * after))
    width = max(len(t) for t, _ in built)
    tokens = torch.tensor([t + [fill] * (width - len(t)) for t, _ in built])
    mask = torch.tensor([m + [0] * (width - len(m)) for _, m in built])
    return tokens, mask


def tables(model, tokens, mask) -> dict[str, object]:
    """Every analysis table of one batch, the numbers only (positions within the batch dropped)."""
    _, cache = model.run_with_cache(tokens, attention_mask=mask)
    massive = analysis.massive_activations(cache, mask)
    gates = analysis.gate_stats(cache, mask)
    return {
        "first_token_attention": analysis.first_token_attention(cache, mask),
        "key_importance_1": analysis.key_importance(cache, 1, mask),
        "sink_rate": torch.tensor(analysis.sink_rate(cache, 0.3, 0, mask)),
        "max_abs_resid_by_layer": analysis.max_abs_resid_by_layer(cache, mask),
        "massive": massive[["max_abs_resid", "median_abs", "n_massive"]],
        "mean_gate_by_head": analysis.mean_gate_by_head(cache, mask),
        "gate_values": analysis.gate_values(cache, None, mask).sort().values,
        "gate_stats": gates,
        "head_quietness": analysis.head_quietness(cache, mask).drop(columns="quiet"),
        "measure": pd.Series(streaming.measure(model, tokens, mask, batch_size=2).summary()),
        "streaming_first_token": streaming.first_token_attention(model, tokens, mask, batch_size=3),
        "streaming_gate_stats": streaming.gate_stats(model, tokens, mask),
    }


def assert_same_tables(got: dict, expected: dict) -> None:
    for name in expected:
        a, b = got[name], expected[name]
        if isinstance(b, pd.DataFrame):
            pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), atol=ATOL, rtol=1e-4)
        elif isinstance(b, pd.Series):
            pd.testing.assert_series_equal(a, b, atol=ATOL, rtol=1e-4)
        else:
            torch.testing.assert_close(a, b, atol=ATOL, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}")


# No shrinking: each example runs two models' worth of tables, and a failure prints its example anyway.
FAST = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], phases=[Phase.generate])


@pytest.mark.slow
@settings(max_examples=12, **FAST)
@given(
    data=st.data(),
    n_seq=st.integers(1, 3),
    length=st.integers(3, 7),
    side=st.sampled_from(["left", "right", "both"]),
)
def test_padded_batches_measure_what_the_unpadded_batch_does(model, data, n_seq, length, side):
    """Sequences of one length need no padding: their batch is the reference. Padding each row
    differently (left, right, both, a hole), in any order, changes no table. The loss is the
    exception by definition: a prediction across a hole is not counted (`model.loss_fn`), so with
    holes it is compared with the model's own loss instead."""
    seed = data.draw(st.integers(0, 1000), label="seed")
    rows = list(random_tokens(model, n_seq, length, seed=seed))
    reference = tables(model, torch.stack(rows), torch.ones(n_seq, length, dtype=torch.long))
    pads = st.integers(0, 3)
    left = [data.draw(pads) if side in ("left", "both") else 0 for _ in rows]
    right = [data.draw(pads) if side in ("right", "both") else 0 for _ in rows]
    holes = [data.draw(st.integers(-1, length - 2)) for _ in rows]
    order = data.draw(st.permutations(range(n_seq)))
    tokens, mask = padded([rows[i] for i in order], [left[i] for i in order], [right[i] for i in order], holes)
    got = tables(model, tokens, mask)
    if any(hole >= 0 for hole in holes):
        model_loss = model(tokens, attention_mask=mask, return_type="loss")
        torch.testing.assert_close(got["measure"].pop("loss"), model_loss.item(), atol=ATOL, rtol=1e-5)
        reference["measure"] = reference["measure"].drop("loss")
    assert_same_tables(got, reference)


@pytest.mark.slow
@settings(max_examples=8, **FAST)
@given(lengths=st.lists(st.integers(2, 7), min_size=2, max_size=3), side=st.sampled_from(["left", "right"]))
def test_mixed_lengths_pool_the_sequences_alone(model, lengths, side):
    """Sequences of different lengths: each per-sequence value is the sequence's own, and the
    pooled first-token attention is the query-weighted mean of the sequences' own values."""
    rows = [random_tokens(model, 1, n, seed=n)[0] for n in lengths]
    width = max(lengths)
    pads = [width - n for n in lengths]
    tokens, mask = padded(rows, pads if side == "left" else [0] * len(rows), [0] * len(rows), [-1] * len(rows))
    _, cache = model.run_with_cache(tokens, attention_mask=mask)
    alone = [model.run_with_cache(row[None])[1] for row in rows]
    per_seq = analysis.key_importance(cache, 0, mask, per_sequence=True)
    for i, own in enumerate(alone):
        torch.testing.assert_close(per_seq[i], analysis.key_importance(own, 0, per_sequence=True)[0], atol=ATOL, rtol=0)
        torch.testing.assert_close(
            analysis.head_averaged_patterns(cache, [0, 1], i, mask), analysis.head_averaged_patterns(own, [0, 1])
        )
    weights = torch.tensor([n - 1.0 for n in lengths])
    expected = sum(w * analysis.first_token_attention(own) for w, own in zip(weights, alone)) / weights.sum()
    torch.testing.assert_close(analysis.first_token_attention(cache, mask), expected, atol=ATOL, rtol=0)
    gate_pos0 = torch.stack([torch.tensor(analysis.gate_stats(own).gate_pos0.to_numpy()) for own in alone]).mean(0)
    torch.testing.assert_close(
        torch.tensor(analysis.gate_stats(cache, mask).gate_pos0.to_numpy()), gate_pos0, atol=ATOL, rtol=0
    )
