"""The analyses, interventions and patching on the bundled hybrid pair itself (trained weights, the
Qwen3.5 layout: Gated DeltaNet on layers 0-2, full attention on layer 3), each against a
recomputation from the raw hooks. tests/analysis/test_hybrid_analysis.py and
tests/patching/test_hybrid_patching.py cover random models of other layouts and Qwen3.5-0.8B's widths."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import require_bundled

import gated_interp
from gated_interp import patching
from gated_interp.analysis import (
    first_token_attention,
    gate_stats,
    intervene,
    linear_attention_stats,
    massive_activations,
    open_linear_gates,
    sink_rate,
    zero_ablate_heads,
)
from gated_interp.loading.bundled import heldout_tokens

FULL, LINEAR = [3], [0, 1, 2]


@pytest.fixture(scope="module")
def pair():
    require_bundled("tiny_hybrid")
    tokens = heldout_tokens("tiny_hybrid")[:6, :48]
    out = {}
    with torch.no_grad():
        for variant in gated_interp.HYBRID_VARIANTS:
            model = gated_interp.load_hooked(variant, size="tiny", progress=False)
            out[variant] = (model, model.run_with_cache(tokens)[1])
    return tokens, out


@pytest.mark.parametrize("variant", gated_interp.HYBRID_VARIANTS)
def test_sink_measures_read_the_full_attention_layer(pair, variant):
    _, models = pair
    model, cache = models[variant]
    assert model.cfg.full_attention_layers == tuple(FULL)
    got = first_token_attention(cache)  # [layer, head]
    assert torch.isnan(got[LINEAR]).all()
    torch.testing.assert_close(got[3], cache["pattern", 3][:, :, 1:, 0].mean(dim=(0, 2)))
    share = cache["pattern", 3][..., 0].mean(-1)  # [batch, head]: each head's mean attention to key 0
    assert sink_rate(cache, eps=0.3) == pytest.approx(float((share > 0.3).float().mean()))
    table = massive_activations(cache)
    for layer in range(4):
        assert table.max_abs_resid[layer] == pytest.approx(float(cache["resid_post", layer].abs().max()))


def test_gate_tables_of_both_kinds_from_the_raw_hooks(pair):
    _, models = pair
    _, cache = models["hybrid_gated"]
    gates = gate_stats(cache)
    assert gates.layer.unique().tolist() == FULL
    for head in range(4):
        row = gates[gates["head"] == head].iloc[0]
        assert row.mean_gate == pytest.approx(float(cache["gate", 3][:, :, head].mean()), rel=1e-5)
    stats = linear_attention_stats(cache, n_boot=20)
    assert sorted(stats.layer.unique()) == LINEAR
    for layer in LINEAR:
        rows = stats[stats.layer == layer].sort_values("head")
        decay = cache["decay", layer].double().mean(dim=(0, 1))
        gate = F.silu(cache["lin_z", layer].double()).abs()
        torch.testing.assert_close(torch.tensor(rows.decay.to_numpy()), decay)
        torch.testing.assert_close(torch.tensor(rows.half_life.to_numpy()), math.log(2) / -decay)
        torch.testing.assert_close(torch.tensor(rows.gate_abs.to_numpy()), gate.mean(dim=(0, 1, 3)))


@torch.no_grad()
def test_ablation_and_gate_interventions_from_the_raw_hooks(pair):
    tokens, models = pair
    model, cache = models["hybrid_ungated"]
    with intervene(model, zero_ablate_heads(model, [(1, 2)])):
        _, ablated = model.run_with_cache(tokens)
    W_O = model.blocks[1].linear_attn.W_O
    torch.testing.assert_close(
        ablated["attn_out", 1], cache["attn_out", 1] - cache["lin_out", 1][:, :, 2] @ W_O[2], atol=1e-5, rtol=1e-5
    )
    with intervene(model, open_linear_gates(model, layers=[2])):
        _, opened = model.run_with_cache(tokens)
    x, block = opened["recurrent_out", 2], model.blocks[2].linear_attn
    normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + model.cfg.rms_norm_eps) * block.norm_w
    torch.testing.assert_close(opened["lin_out", 2], normed)


@torch.no_grad()
def test_head_patching_of_both_kinds_equals_one_forward_per_patch(pair):
    tokens, models = pair
    model, _ = models["hybrid_gated"]
    clean, corrupted = tokens[:3, :12], tokens[3:6, :12]
    _, clean_cache = model.run_with_cache(clean)

    def metric(logits):
        return logits[:, -1, 10].mean()

    for activation, layers, n_heads in (("z", FULL, 4), ("recurrent_out", LINEAR, 4)):
        got = patching.patch_heads(model, corrupted, clean_cache, metric, activation, progress=False)
        for layer in layers:
            for head in range(n_heads):
                name = f"blocks.{layer}.{'attn' if layer in FULL else 'linear_attn'}.hook_{activation}"

                def put_clean(act, hook, head=head, name=name):
                    act = act.clone()
                    act[:, :, head] = clean_cache[name][:, :, head]
                    return act

                want = metric(model.run_with_hooks(corrupted, fwd_hooks=[(name, put_clean)]))
                assert float(got[layer, head]) == pytest.approx(float(want), abs=1e-5), (activation, layer, head)
        other = [layer for layer in range(4) if layer not in layers]
        assert torch.isnan(got[other]).all()
