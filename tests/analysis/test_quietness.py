"""head_quietness on a hand-built cache whose every column is known in advance."""

from __future__ import annotations

import pytest
import torch
from helpers import make_tiny as build
from helpers import random_tokens

from gated_interp.analysis import head_quietness


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    model, _, _ = build(tmp_path_factory.mktemp("quiet"), gate="headwise", seed=2)  # 2 layers, 4 heads, 2 kv
    return model


def _hand_cache(model, batch=2, n=5):
    """Values: ones at positions >= 1, 0.1 * ones at position 0 (so value_norm_ratio = 0.1 exactly,
    whatever W_O is). Layer 0: head 0 attends only to position 0, gate open (quiet via the sink);
    head 1 attends to the last key, gate 0.1 (quiet via the gate); head 2 attends to the last key,
    gate open (active); head 3 attends to position 0 with gate 0.1 (both). Layer 1: all heads
    attend to the last key with gate 0.8, except head 0 which writes a z of 0.1 (quiet, other)."""
    cfg = model.cfg
    cache = {}
    for layer in range(cfg.n_layers):
        v = torch.ones(batch, n, cfg.n_key_value_heads, cfg.d_head)
        v[:, 0] = 0.1
        pattern = torch.zeros(batch, cfg.n_heads, n, n)
        gate = torch.ones(batch, n, cfg.n_heads, 1)
        if layer == 0:
            to_first, gates = [True, False, False, True], [1.0, 0.1, 1.0, 0.1]
        else:
            to_first, gates = [False] * 4, [0.8] * 4
        for h in range(cfg.n_heads):
            if to_first[h]:
                pattern[:, h, :, 0] = 1.0
            else:
                pattern[:, h, :, :] = torch.eye(n)  # each query reads its own (last visible) key
            gate[:, :, h] = gates[h]
        z = torch.einsum("bhqk,bkhd->bqhd", pattern, v.repeat_interleave(cfg.n_groups, 2)) * gate
        if layer == 1:
            z[:, :, 0] = 0.1
        cache |= {
            f"blocks.{layer}.attn.hook_pattern": pattern,
            f"blocks.{layer}.attn.hook_v": v,
            f"blocks.{layer}.attn.hook_z": z,
            f"blocks.{layer}.attn.hook_gate": gate,
        }
    return cache


def test_hand_built_heads_land_in_their_classes(model):
    table = head_quietness(_hand_cache(model), model=model)
    assert list(table.label) == [f"L{layer}H{h}" for layer in range(2) for h in range(4)]
    assert table.value_norm_ratio.to_numpy() == pytest.approx([0.1] * 8)
    assert table.first_token_attention.to_list() == pytest.approx([1, 0, 0, 1, 0, 0, 0, 0])
    assert table.gate_other.to_list() == pytest.approx([1, 0.1, 1, 0.1] + [0.8] * 4)
    # output / typical value norm: sink-reading head writes 0.1; gated heads write their gate.
    assert table.output_ratio.to_list() == pytest.approx([0.1, 0.1, 1.0, 0.01, 0.1, 0.8, 0.8, 0.8])
    assert list(table.quiet) == ["sink", "gate", "active", "sink+gate", "quiet (other)", "active", "active", "active"]
    # thresholds are arguments: with quiet_below=0.05 only the head quiet in both ways stays quiet
    strict = head_quietness(_hand_cache(model), model=model, quiet_below=0.05)
    assert list(strict.quiet).count("active") == 7 and strict.quiet[3] == "sink+gate"


def test_padding_is_left_out(model):
    cache = _hand_cache(model, batch=2, n=5)
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[1, 3:] = 0
    for layer in range(2):  # garbage at the padded positions must not count
        cache[f"blocks.{layer}.attn.hook_z"][1, 3:] = 100.0
        cache[f"blocks.{layer}.attn.hook_v"][1, 3:] = 100.0
    table = head_quietness(cache, mask, model=model)
    assert table.output_ratio.to_list() == pytest.approx([0.1, 0.1, 1.0, 0.01, 0.1, 0.8, 0.8, 0.8])


def test_on_a_real_cache_and_bad_input(model):
    _, cache = model.run_with_cache(random_tokens(model, 2, 6))
    table = head_quietness(cache)
    assert len(table) == 8 and table.output_ratio.gt(0).all() and table.gate_other.between(0, 1).all()
    with pytest.raises(KeyError, match="hook_pattern"):
        head_quietness({}, model=model)
    with pytest.raises(ValueError, match="W_O"):
        head_quietness(dict(cache.cache_dict))


def test_an_ungated_model_has_no_gate_score_and_never_closes(tmp_path):
    # gate_other is gate_stats' quantity (mean gate over queries >= 1): NaN without a gate, as in
    # every other table, so no head of a baseline is classed as quiet through its gate.
    baseline, _, _ = build(tmp_path, gate="none", seed=2)
    _, cache = baseline.run_with_cache(random_tokens(baseline, 2, 6))
    table = head_quietness(cache)
    assert table.gate_other.isna().all()
    assert not table.quiet.isin(["gate", "sink+gate"]).any()
