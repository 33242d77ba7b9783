"""Every analysis and intervention on a hybrid (Qwen3.5) model, against a recomputation from the raw hooks.

A tiny random Qwen3.5 folder (tests/hybrid_models.py, every weight perturbed) with layers
linear, full, linear, full: attention quantities sit on layers 1 and 3 with those indices (NaN rows
on 0 and 2), massive activations on every layer, Gated DeltaNet statistics on 0 and 2.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hybrid_models import QWEN3_5_08B_WIDTHS, hybrid_checkpoint

from gated_interp import GatedQwen3Config, HookedGatedQwen3
from gated_interp.analysis import (
    ablation_effects,
    compare_variants,
    first_token_attention,
    fix_gates,
    fix_linear_gates,
    gate_attribution_stack,
    gate_stats,
    gate_values,
    head_averaged_patterns,
    head_quietness,
    intervene,
    key_importance,
    linear_attention_stats,
    massive_activations,
    mean_ablate_heads,
    mean_gate_by_head,
    mean_gate_score,
    mean_linear_gates,
    measure,
    open_gates,
    open_linear_gates,
    sink_rate,
    zero_ablate_heads,
)
from gated_interp.loading.load import load_folder

LAYER_TYPES = ["linear_attention", "full_attention", "linear_attention", "full_attention"]
FULL, LINEAR = [1, 3], [0, 2]


@pytest.fixture(autouse=True)
def no_grad():
    with torch.no_grad():
        yield


# The tiny random shape, and Qwen3.5-0.8B's widths (8 query / 2 key-value heads of 256, DeltaNet
# 16 key / 16 value heads of 128, d_model 1024) on the same four layers.
SHAPES = {"tiny": {}, "0.8B widths": QWEN3_5_08B_WIDTHS}


@pytest.fixture(scope="module", params=["tiny", pytest.param("0.8B widths", marks=pytest.mark.slow)])
def hybrid(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen3_5_text")
    hybrid_checkpoint("qwen3_5_text", folder, seed=3, layer_types=LAYER_TYPES, **SHAPES[request.param])
    return load_folder(folder, device="cpu", fold_ln=False, progress=False)


@pytest.fixture(scope="module")
def run(hybrid):
    tokens = torch.randint(0, 64, (5, 10), generator=torch.Generator().manual_seed(1))
    _, cache = hybrid.run_with_cache(tokens)
    return tokens, cache


def _by_layer(values: dict[int, torch.Tensor], n_layers: int = 4) -> torch.Tensor:
    out = torch.full((n_layers, *next(iter(values.values())).shape), float("nan"))
    for layer, value in values.items():
        out[layer] = value
    return out


def test_first_token_attention_keeps_true_layer_indices(run):
    tokens, cache = run
    want = _by_layer({layer: cache["pattern", layer][:, :, 1:, 0].mean(dim=(0, 2)) for layer in FULL})
    got = first_token_attention(cache)
    assert torch.equal(torch.isnan(got), torch.isnan(want)) and torch.isnan(got[LINEAR]).all()
    torch.testing.assert_close(got[FULL], want[FULL])
    torch.testing.assert_close(first_token_attention(cache, per="layer")[FULL], want[FULL].mean(-1))
    torch.testing.assert_close(first_token_attention(cache, per="model"), want[FULL].mean())


def test_key_importance_and_sink_rate_over_full_attention_layers(hybrid, run):
    _, cache = run
    per_seq = torch.stack([cache["pattern", layer][..., 0].mean(-1) for layer in FULL], 1)  # [batch, 2, head]
    got = key_importance(cache, per_sequence=True)
    assert got.shape == (5, 4, hybrid.cfg.n_heads) and torch.isnan(got[:, LINEAR]).all()
    torch.testing.assert_close(got[:, FULL], per_seq)
    for eps in (0.2, 0.3, 0.5):
        want = (per_seq > eps).float().mean(dim=(1, 2)).mean()
        assert sink_rate(cache, eps=eps) == pytest.approx(float(want))


def test_gates_on_full_attention_layers_only(run):
    _, cache = run
    table = gate_stats(cache)
    assert sorted(table.layer.unique()) == FULL
    for layer in FULL:
        want = cache["gate", layer].mean(dim=(0, 1, 3))
        got = table[table.layer == layer].sort_values("head")["mean_gate"].to_numpy()
        torch.testing.assert_close(torch.tensor(got), want.double(), atol=1e-6, rtol=1e-6)
    by_head = mean_gate_by_head(cache)
    assert torch.isnan(by_head[LINEAR]).all()
    want_score = torch.stack([cache["gate", layer].mean() for layer in FULL]).mean()
    assert mean_gate_score(cache) == pytest.approx(float(want_score), rel=1e-5)
    with pytest.raises(ValueError, match=r"layer 0 is a linear_attention layer.*\[1, 3\]"):
        gate_values(cache, layer=0)
    with pytest.raises(ValueError, match=r"linear_attention layer.*\[1, 3\]"):
        head_averaged_patterns(cache, [2])
    assert head_averaged_patterns(cache, [3]).shape == (1, 10, 10)


def test_head_quietness_rows_are_full_attention_heads(hybrid, run):
    _, cache = run
    table = head_quietness(cache)
    assert sorted(table.layer.unique()) == FULL and len(table) == len(FULL) * hybrid.cfg.n_heads
    want = cache["pattern", 3][:, 2, 1:, 0].mean()
    got = table[(table.layer == 3) & (table["head"] == 2)].first_token_attention.item()
    assert got == pytest.approx(float(want), rel=1e-5)


def test_gate_attribution_through_linear_layers_sums_to_the_gate_logit(hybrid, run):
    _, cache = run
    stack, labels = gate_attribution_stack(cache, layer=3, head=1)
    assert "L0 lin3" in labels and "L1H0" in labels and "L2 lin0" in labels and "L0 b_O" not in labels
    torch.testing.assert_close(stack.sum(0), cache["gate_logits", 3][:, :, 1].double(), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="layer 2 is a linear_attention layer"):
        gate_attribution_stack(cache, layer=2, head=0)


def test_massive_activations_cover_every_layer(run):
    _, cache = run
    table = massive_activations(cache)
    assert table.layer.tolist() == [0, 1, 2, 3]
    for layer in range(4):
        assert table.max_abs_resid[layer] == pytest.approx(float(cache["resid_post", layer].abs().max()))


def test_streaming_measure_equals_the_cache(hybrid, run):
    tokens, cache = run
    m = measure(hybrid, tokens, batch_size=2)
    assert m.attention_layers == (1, 3)
    got = m.first_token_attention("head")
    torch.testing.assert_close(got, first_token_attention(cache), equal_nan=True)
    summary = m.summary()
    assert summary["sink_rate"] == pytest.approx(sink_rate(cache))
    assert summary["mean_gate"] == pytest.approx(mean_gate_score(cache), rel=1e-5)
    want_resid = torch.stack([cache["resid_post", layer].abs().max() for layer in range(4)]).mean()
    assert summary["max_abs_resid"] == pytest.approx(float(want_resid), rel=1e-6)
    assert m.as_dict()["attention_layers"] == [1, 3]
    for name, (lo, hi) in m.bootstrap(200).items():
        assert lo <= summary[name] + 1e-6 and summary[name] <= hi + 1e-6, name


def test_compare_variants_across_families(hybrid, run):
    tokens, cache = run
    dense_cfg = GatedQwen3Config.tiny(gate="none", d_vocab=64, n_layers=2)
    dense = HookedGatedQwen3(dense_cfg).init_weights(seed=0)
    table = compare_variants({"baseline": dense, "qwen3_5": hybrid}, tokens, n_boot=50)
    assert table.loc["baseline", "attention_layers"] == "all" and table.loc["qwen3_5", "attention_layers"] == "1,3"
    assert math.isnan(table.loc["baseline", "mean_gate"])
    assert table.loc["qwen3_5", "first_token_attention"] == pytest.approx(
        float(first_token_attention(cache, per="model"))
    )
    assert table.loc["qwen3_5", "mean_gate"] == pytest.approx(mean_gate_score(cache), rel=1e-5)


def test_linear_attention_stats_from_the_raw_hooks(run):
    _, cache = run
    table = linear_attention_stats(cache, n_boot=100)
    assert sorted(table.layer.unique()) == LINEAR and set(table.layer_type) == {"linear_attention"}
    for layer in LINEAR:
        rows = table[table.layer == layer].sort_values("head")
        decay = cache["decay", layer].double().mean(dim=(0, 1))
        gate = F.silu(cache["lin_z", layer].double()).abs()  # silu(z) recomputed from its input
        checks = {
            "decay": decay,
            "half_life": math.log(2) / -decay,
            "beta": cache["beta", layer].double().mean(dim=(0, 1)),
            "gate_abs": gate.mean(dim=(0, 1, 3)),
            "gate_frac_near_zero": (gate < 0.1).double().mean(dim=(0, 1, 3)),
        }
        for column, want in checks.items():
            torch.testing.assert_close(torch.tensor(rows[column].to_numpy()), want, rtol=1e-5, atol=1e-6)
            assert (rows[f"{column}_lo"] <= rows[column] + 1e-9).all() and (
                rows[column] <= rows[f"{column}_hi"] + 1e-9
            ).all()
    with pytest.raises(ValueError, match="has none"):
        linear_attention_stats(_dense_cache())


def _dense_cache():
    model = HookedGatedQwen3(GatedQwen3Config.tiny(d_vocab=64, n_layers=2)).init_weights(seed=0)
    return model.run_with_cache(torch.zeros(1, 4, dtype=torch.long))[1]


def test_gate_interventions_act_on_the_right_layer_type(hybrid, run):
    tokens, cache = run
    assert [name for name, _ in open_gates(hybrid)] == ["blocks.1.attn.hook_gate", "blocks.3.attn.hook_gate"]
    with pytest.raises(ValueError, match=r"full_attention layers \(\[1, 3\].*layers \[0\].*linear_gates"):
        fix_gates(hybrid, 0.5, layers=0)
    with pytest.raises(ValueError, match=r"linear_attention layers \(\[0, 2\].*layers \[1\].*open_gates"):
        open_linear_gates(hybrid, layers=1)
    with pytest.raises(ValueError, match="silu"):
        fix_linear_gates(hybrid, -0.5)
    # An open output gate: the gated norm multiplies by one, recomputed from the delta rule's output.
    with intervene(hybrid, open_linear_gates(hybrid, layers=[2], heads=[1])):
        _, opened = hybrid.run_with_cache(tokens)
    block = hybrid.blocks[2].linear_attn
    x = opened["recurrent_out", 2]
    normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + hybrid.cfg.rms_norm_eps) * block.norm_w
    torch.testing.assert_close(opened["lin_out", 2][:, :, 1], normed[:, :, 1])
    torch.testing.assert_close(opened["lin_out", 2][:, :, 0], cache["lin_out", 2][:, :, 0])  # others untouched
    torch.testing.assert_close(opened["resid_post", 1], cache["resid_post", 1])  # nothing before layer 2 moves
    # A mean gate on one reference prompt, per position, is that prompt's own gate.
    hooks = mean_linear_gates(hybrid, tokens[:1], over="batch")
    with intervene(hybrid, hooks):
        _, meaned = hybrid.run_with_cache(tokens[:1])
    torch.testing.assert_close(meaned["lin_gate", 0], cache["lin_gate", 0][:1])
    with intervene(hybrid, fix_gates(hybrid, 0.0, layers=3, heads=2)):
        _, closed = hybrid.run_with_cache(tokens)
    assert torch.equal(closed["z", 3][:, :, 2], torch.zeros_like(closed["z", 3][:, :, 2]))


def test_head_ablation_of_both_kinds(hybrid, run):
    tokens, cache = run
    hooks = zero_ablate_heads(hybrid, [(0, 3), (1, 2)])
    assert [name for name, _ in hooks] == ["blocks.0.linear_attn.hook_out", "blocks.1.attn.hook_z"]
    with intervene(hybrid, hooks):
        _, ablated = hybrid.run_with_cache(tokens)
    W_O = hybrid.blocks[0].linear_attn.W_O
    want = cache["attn_out", 0] - cache["lin_out", 0][:, :, 3] @ W_O[3]
    torch.testing.assert_close(ablated["attn_out", 0], want, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="heads"):
        zero_ablate_heads(hybrid, [(1, hybrid.cfg.n_heads)])  # query heads 0 .. n_heads - 1
    mean_hooks = mean_ablate_heads(hybrid, [(2, 0)], tokens)
    with intervene(hybrid, mean_hooks):
        _, meaned = hybrid.run_with_cache(tokens)
    want_mean = cache["lin_out", 2][:, :, 0].mean(dim=(0, 1))
    torch.testing.assert_close(meaned["lin_out", 2][:, :, 0], want_mean.expand(5, 10, -1))


def test_ablation_effects_with_intervals_on_both_kinds(hybrid, run):
    tokens, _ = run
    table = ablation_effects(
        hybrid,
        tokens,
        {
            "open full gates": open_gates(hybrid),
            "open linear gates": open_linear_gates(hybrid),
            "zero L0 lin1": zero_ablate_heads(hybrid, [(0, 1)]),
        },
        n_boot=100,
    )
    assert table.loc["clean", "delta_loss"] == 0
    logits = hybrid.run_with_hooks(tokens, fwd_hooks=open_linear_gates(hybrid))
    assert table.loc["open linear gates", "loss"] == pytest.approx(float(hybrid.loss_fn(logits, tokens)), rel=1e-5)
    assert (table.loss_lo <= table.loss + 1e-9).all() and (table.loss <= table.loss_hi + 1e-9).all()
