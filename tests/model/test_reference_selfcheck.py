"""Self-checks for tests/reference.py: against HF Qwen3 (no gate) and gate layout."""

import pytest
import torch
from hf_reference import hf_qwen3
from reference import (
    random_released_checkpoint,
    reference_activations,
    reference_logits,
    tiny_config,
)

TOL = 1e-4


CONFIGS = [
    dict(),  # GQA 4 heads / 2 kv heads
    dict(num_key_value_heads=4, qkv_bias=True),
    dict(num_key_value_heads=1, tie_word_embeddings=True, qkv_bias=True),
    dict(head_dim=8, rope_theta=1e6, num_hidden_layers=3),
    dict(rope_scaling={"rope_type": "linear", "factor": 2.0}),
]


@pytest.mark.parametrize("overrides", CONFIGS)
def test_matches_hf_qwen3_no_gate(overrides):
    cfg = tiny_config(**overrides)
    sd = random_released_checkpoint(cfg, seed=1)
    ids = torch.randint(0, cfg["vocab_size"], (2, 11), generator=torch.Generator().manual_seed(0))
    ours = reference_logits(cfg, sd, ids)
    with torch.no_grad():
        theirs = hf_qwen3(cfg, sd)(input_ids=ids).logits.float()
    assert ours.shape == (2, 11, cfg["vocab_size"])
    assert ours.std() > 0.1  # non-trivial logits
    assert (ours - theirs).abs().max().item() <= TOL


def test_rope_parameters_form_equivalent():
    cfg = tiny_config(rope_theta=12345.0)
    sd = random_released_checkpoint(cfg)
    cfg2 = dict(cfg)
    del cfg2["rope_theta"]
    cfg2["rope_parameters"] = {"rope_theta": 12345.0, "rope_type": "default"}
    ids = torch.arange(9)[None] % cfg["vocab_size"]
    assert torch.equal(reference_logits(cfg, sd, ids), reference_logits(cfg2, sd, ids))


@pytest.mark.parametrize("gate", [None, "headwise", "elementwise"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_matches_unpadded(side, gate):
    overrides = {"qkv_bias": True}
    if gate:
        overrides[f"{gate}_attn_output_gate"] = True
    cfg = tiny_config(**overrides)
    sd = random_released_checkpoint(cfg, seed=2)
    gen = torch.Generator().manual_seed(3)
    lens = [9, 5, 7]
    P = max(lens)
    seqs = [torch.randint(0, cfg["vocab_size"], (n,), generator=gen) for n in lens]
    ids = torch.zeros(len(lens), P, dtype=torch.long)
    mask = torch.zeros(len(lens), P, dtype=torch.long)
    for b, s in enumerate(seqs):
        sl = slice(0, len(s)) if side == "right" else slice(P - len(s), P)
        ids[b, sl] = s
        mask[b, sl] = 1
    batched = reference_logits(cfg, sd, ids, mask)
    assert torch.isfinite(batched).all()
    hf = hf_qwen3(cfg, sd) if gate is None else None
    for b, s in enumerate(seqs):
        sl = slice(0, len(s)) if side == "right" else slice(P - len(s), P)
        single = reference_logits(cfg, sd, s[None])[0]
        assert (batched[b, sl] - single).abs().max().item() <= TOL
        if hf is not None:
            with torch.no_grad():
                h = hf(input_ids=s[None]).logits[0].float()
            assert (batched[b, sl] - h).abs().max().item() <= TOL


def _gated_from_ungated(cfg_plain, sd_plain, kind, gate_w, gate_b):
    """Build the released grouped q_proj layout by explicit per-group loops.

    gate_w: [h, g, d] gate weight rows per head; gate_b: [h, g] biases or None.
    """
    h, kv, hd = cfg_plain["num_attention_heads"], cfg_plain["num_key_value_heads"], cfg_plain["head_dim"]
    n_rep = h // kv
    cfg = dict(cfg_plain, **{f"{kind}_attn_output_gate": True})
    sd = dict(sd_plain)
    for i in range(cfg["num_hidden_layers"]):
        key = f"model.layers.{i}.self_attn.q_proj"
        w = sd_plain[key + ".weight"]
        b = sd_plain.get(key + ".bias")
        rows, brows = [], []
        for grp in range(kv):
            heads = range(grp * n_rep, (grp + 1) * n_rep)
            for j in heads:
                rows.append(w[j * hd : (j + 1) * hd])
                if b is not None:
                    brows.append(b[j * hd : (j + 1) * hd])
            for j in heads:
                rows.append(gate_w[j])
                if b is not None:
                    brows.append(gate_b[j])
        sd[key + ".weight"] = torch.cat(rows)
        if b is not None:
            sd[key + ".bias"] = torch.cat(brows)
    return cfg, sd


@pytest.mark.parametrize("kind", ["headwise", "elementwise"])
@pytest.mark.parametrize("n_kv", [1, 2, 4])
def test_gate_open_equals_ungated(kind, n_kv):
    cfg = tiny_config(qkv_bias=True, num_key_value_heads=n_kv)
    sd = random_released_checkpoint(cfg, seed=4)
    h, hd, d = cfg["num_attention_heads"], cfg["head_dim"], cfg["hidden_size"]
    g = 1 if kind == "headwise" else hd
    gcfg, gsd = _gated_from_ungated(cfg, sd, kind, torch.zeros(h, g, d), torch.full((h, g), 50.0))
    assert gsd["model.layers.0.self_attn.q_proj.weight"].shape[0] == h * hd + h * g
    ids = torch.randint(0, cfg["vocab_size"], (2, 10), generator=torch.Generator().manual_seed(5))
    plain = reference_logits(cfg, sd, ids)
    gated_acts = reference_activations(gcfg, gsd, ids)
    assert (gated_acts["logits"] - plain).abs().max().item() <= TOL
    # raw queries come out of the interleaved layout unchanged
    assert gated_acts["blocks.0.gate_logits"].shape == (2, 10, h, g)
    assert torch.allclose(gated_acts["blocks.0.q"], reference_activations(cfg, sd, ids)["blocks.0.q"])


@pytest.mark.parametrize("kind", ["headwise", "elementwise"])
@pytest.mark.parametrize("n_kv", [1, 2, 4])
def test_gate_per_head_closing(kind, n_kv):
    """Close one head's gate (bias -50); equals ungated model with that head's o_proj columns zeroed.
    Without bias, zero gate logits give sigmoid 0.5 on another check."""
    cfg = tiny_config(qkv_bias=True, num_key_value_heads=n_kv)
    sd = random_released_checkpoint(cfg, seed=6)
    h, hd, d = cfg["num_attention_heads"], cfg["head_dim"], cfg["hidden_size"]
    g = 1 if kind == "headwise" else hd
    ids = torch.randint(0, cfg["vocab_size"], (2, 10), generator=torch.Generator().manual_seed(7))
    for closed in range(h):
        bias = torch.full((h, g), 50.0)
        bias[closed] = -50.0
        gcfg, gsd = _gated_from_ungated(cfg, sd, kind, torch.zeros(h, g, d), bias)
        ref_sd = dict(sd)
        for i in range(cfg["num_hidden_layers"]):
            key = f"model.layers.{i}.self_attn.o_proj.weight"
            w = sd[key].clone()
            w[:, closed * hd : (closed + 1) * hd] = 0
            ref_sd[key] = w
        diff = (reference_logits(gcfg, gsd, ids) - reference_logits(cfg, ref_sd, ids)).abs().max()
        assert diff.item() <= TOL


def test_gate_half_without_bias():
    cfg = tiny_config(num_key_value_heads=2)
    sd = random_released_checkpoint(cfg, seed=8)
    h, d = cfg["num_attention_heads"], cfg["hidden_size"]
    gcfg, gsd = _gated_from_ungated(cfg, sd, "headwise", torch.zeros(h, 1, d), None)
    ref_sd = dict(sd)
    for i in range(cfg["num_hidden_layers"]):
        key = f"model.layers.{i}.self_attn.o_proj.weight"
        ref_sd[key] = sd[key] * 0.5
    ids = torch.arange(12)[None] * 7 % cfg["vocab_size"]
    acts = reference_activations(gcfg, gsd, ids)
    assert torch.allclose(acts["blocks.1.z"], 0.5 * acts["blocks.1.z_pre_gate"])
    assert (acts["logits"] - reference_logits(cfg, ref_sd, ids)).abs().max().item() <= TOL


def test_activation_shapes_and_checkpoint_keys():
    cfg = tiny_config(elementwise_attn_output_gate=True, tie_word_embeddings=True, use_qk_norm=False)
    sd = random_released_checkpoint(cfg)
    assert "lm_head.weight" not in sd
    assert not any("q_norm" in k or k.endswith(".bias") for k in sd)
    assert sd["model.layers.0.self_attn.q_proj.weight"].shape == (4 * 16 * 2, 64)
    ids = torch.arange(6)[None].repeat(3, 1)
    acts = reference_activations(cfg, sd, ids)
    L = acts["layers"][1]
    assert L["q"].shape == (3, 6, 4, 16)
    assert L["gate_logits"].shape == (3, 6, 4, 16)
    assert L["z_pre_gate"].shape == L["z"].shape == (3, 6, 4, 16)
    assert L["pattern"].shape == (3, 4, 6, 6)
    assert torch.allclose(L["pattern"].sum(-1), torch.ones(3, 4, 6))
    assert torch.all(L["pattern"].triu(1) == 0)
    assert L["resid_post"].shape == (3, 6, 64)
    assert acts["logits"].shape == (3, 6, cfg["vocab_size"])
