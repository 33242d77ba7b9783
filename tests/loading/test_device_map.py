"""Models bigger than one device (issue 27): a model dispatched by accelerate, part of it on the CPU
and part offloaded to disk, gives the numbers of the same model loaded whole: logits, every hook,
hooks added by the user, a streaming measurement, an intervention, a patching sweep, attribution
patching's backward, generate and save_hf. The plan of an 80B-shaped Qwen3-Next and a 27B-shaped
Qwen3.5 comes from config.json alone, on the meta device.
"""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch
from hybrid_models import hybrid_checkpoint

from gated_interp.analysis import interventions, streaming
from gated_interp.config import GatedQwen3Config
from gated_interp.loading import load_hooked, plan_device_map, save_hf
from gated_interp.loading.load import load_folder
from gated_interp.patching import attribution_patching, metrics, patch_heads

# Blocks alternate between the CPU and the disk; the embedding and unembedding on disk.
SPLIT = {"embed": "disk", "rotary": "cpu", "blocks.0": "cpu", "blocks.1": "disk", "blocks.2": "cpu",
         "blocks.3": "disk", "ln_final": "cpu", "unembed": "disk"}  # fmt: skip
PROMPTS = ["The quick brown fox jumps over the lazy dog", "A cat sat on the mat and looked at the"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(loaded whole, dispatched by SPLIT) from the bundled gated model, both with fold_ln."""
    whole = load_hooked("gate_elementwise", size="tiny")
    split = load_hooked(
        "gate_elementwise", size="tiny", device_map=SPLIT, offload_folder=tmp_path_factory.mktemp("offload")
    )
    return whole, split


def _equal(got, want, what):
    """Equal to float32 rounding (<= 1e-5 relative to max(1, |x|)): a block read back from the disk
    holds its weights contiguous, not in the per-head layout the whole model reads in place, so its
    matrix products may sum in another order (a few 1e-6 here)."""
    assert got.shape == want.shape, what
    got, want = got.float(), want.float()
    error = torch.where(got == want, 0.0, (got - want).abs() / want.abs().clamp(min=1))  # masked scores: -inf
    assert bool((error <= 1e-5).all()), f"{what}: {error.max()}"


def test_offloaded_parameters_are_on_meta_and_the_map_is_kept(models):
    _, split = models
    assert split.hf_device_map == SPLIT
    assert split.blocks[1].attn.W_Q.device.type == "meta"  # on disk until its block runs
    assert split.blocks[0].attn.W_Q.device.type == "cpu"
    assert split.cfg.device == "cpu"


def test_logits_and_every_hook_equal_the_whole_model(models):
    whole, split = models
    tokens = whole.to_tokens(PROMPTS)
    want_logits, want = whole.run_with_cache(tokens)
    got_logits, got = split.run_with_cache(tokens)
    _equal(got_logits, want_logits, "logits")
    assert sorted(got.keys()) == sorted(want.keys()) and len(want.keys()) > 100
    for name in want.keys():
        _equal(got[name], want[name], name)


def test_hooks_see_the_values_of_the_whole_model(models):
    whole, split = models
    tokens = whole.to_tokens(PROMPTS)
    seen: dict[str, list[torch.Tensor]] = {"whole": [], "split": []}
    for key, model in (("whole", whole), ("split", split)):
        hooks = [
            (f"blocks.{layer}.attn.hook_gate", lambda t, hook, key=key: seen[key].append(t.clone()))
            for layer in range(4)
        ]
        model.run_with_hooks(tokens, fwd_hooks=hooks)
    for layer, (got, want) in enumerate(zip(seen["split"], seen["whole"])):
        _equal(got, want, f"hook_gate {layer}")


def test_streaming_measurement_and_intervention(models):
    whole, split = models
    tokens = whole.to_tokens(PROMPTS)
    assert streaming.measure(split, tokens).summary() == streaming.measure(whole, tokens).summary()
    ablated = [
        m.run_with_hooks(tokens, fwd_hooks=interventions.zero_ablate_heads(m, [(1, 0), (3, 2)])) for m in (whole, split)
    ]
    _equal(ablated[1], ablated[0], "zero-ablated logits")


def test_patching_sweep_and_attribution_patching(models):
    whole, split = models
    clean, corrupted = whole.to_tokens(PROMPTS[0]), whole.to_tokens("The slow green fox jumps over the lazy cat")
    metric = partial(metrics.logit_diff, answer_tokens=torch.tensor([5]), wrong_tokens=torch.tensor([7]))
    for activation in ("gate", "z"):
        want = patch_heads(whole, corrupted, whole.run_with_cache(clean)[1], metric, activation=activation)
        got = patch_heads(split, corrupted, split.run_with_cache(clean)[1], metric, activation=activation)
        _equal(got, want, f"patch_heads {activation}")
    want, got = (attribution_patching(m, clean, corrupted, metric) for m in (whole, split))
    assert want.keys() == got.keys()
    for name in want:
        _equal(got[name], want[name], f"attribution patching {name}")


def test_generate_and_save_hf(models, tmp_path):
    whole, split = models
    prompt = whole.to_tokens(PROMPTS[0])[:, :5]
    kwargs = dict(max_new_tokens=6, do_sample=False, verbose=False)
    assert torch.equal(split.generate(prompt, **kwargs), whole.generate(prompt, **kwargs))
    reloaded = load_hooked(save_hf(split, tmp_path / "saved"))
    tokens = whole.to_tokens(PROMPTS)
    _equal(reloaded(tokens), whole(tokens), "logits of the saved dispatched model")


def test_auto_map_within_max_memory_offloads_to_disk(tmp_path):
    """`max_memory` smaller than the model: accelerate fills the CPU, then the disk, blocks whole."""
    whole = load_hooked("gate_headwise", size="tiny")
    size = sum(p.numel() * p.element_size() for p in whole.parameters())
    model = load_hooked(
        "gate_headwise", size="tiny", device_map="auto", max_memory={"cpu": size // 2}, offload_folder=tmp_path
    )
    assert {"cpu", "disk"} <= set(model.hf_device_map.values())
    assert (tmp_path / "index.json").is_file()
    tokens = whole.to_tokens(PROMPTS)
    _, want = whole.run_with_cache(tokens)
    _, got = model.run_with_cache(tokens)
    for name in want.keys():
        _equal(got[name], want[name], name)


@pytest.mark.parametrize("family", [pytest.param("qwen3_next", marks=pytest.mark.slow), "qwen3_5_text"])
def test_hybrid_family_split_across_cpu_and_disk(tmp_path, family):
    """Gated DeltaNet and MoE blocks offloaded to disk: every hook as the whole model; unfolded too."""
    hybrid_checkpoint(family, tmp_path / "model", seed=3)
    dispatched = dict(device_map={"": "disk", "blocks.0": "cpu", "blocks.3": "cpu"}, offload_folder=tmp_path / "off")
    tokens = torch.tensor([[1, 5, 9, 2, 33, 7, 20, 11]])
    for fold_ln in (True, False):
        whole = load_folder(tmp_path / "model", fold_ln=fold_ln)
        model = load_hooked(tmp_path / "model", fold_ln=fold_ln, **dispatched)
        _, want = whole.run_with_cache(tokens)
        logits, got = model.run_with_cache(tokens)
        _equal(logits, whole(tokens), "logits")
        for name in want.keys():
            _equal(got[name], want[name], f"{name} (fold_ln={fold_ln})")


def test_refusals_name_what_to_do():
    with pytest.raises(ValueError, match="either device or device_map"):
        load_hooked("gate_headwise", size="tiny", device="cpu", device_map="auto")
    with pytest.raises(ValueError, match="a block is placed whole"):
        load_hooked("gate_headwise", size="tiny", device_map={"": "cpu", "blocks.1.attn": "disk"})
    with pytest.raises(ValueError, match="does not place"):
        load_hooked("gate_headwise", size="tiny", device_map={"embed": "cpu", "blocks": "cpu"})
    with pytest.raises(ValueError, match="apply with a device_map"):
        load_hooked("gate_headwise", size="tiny", max_memory={"cpu": "1GiB"})
    with pytest.raises(ValueError, match="device_map='auto'"):
        GatedQwen3Config.tiny(n_devices=2)


# ---- plans from config.json alone ---------------------------------------------------------------
# The released shapes of Qwen3-Next-80B-A3B and Qwen3.5-27B (config.json keys, no weights).
NEXT_80B = dict(
    model_type="qwen3_next", hidden_size=2048, num_hidden_layers=48, num_attention_heads=16, num_key_value_heads=2,
    head_dim=256, intermediate_size=5120, moe_intermediate_size=512, shared_expert_intermediate_size=512,
    num_experts=512, num_experts_per_tok=10, vocab_size=151936, linear_num_key_heads=16, linear_num_value_heads=32,
    linear_key_head_dim=128, linear_value_head_dim=128, linear_conv_kernel_dim=4, full_attention_interval=4,
    partial_rotary_factor=0.25, rope_theta=10000000, max_position_embeddings=262144, decoder_sparse_step=1,
    mlp_only_layers=[], tie_word_embeddings=False,
)  # fmt: skip
QWEN35_27B = dict(
    model_type="qwen3_5_text", hidden_size=5120, num_hidden_layers=64, num_attention_heads=24, num_key_value_heads=4,
    head_dim=256, intermediate_size=17408, vocab_size=248320, linear_num_key_heads=16, linear_num_value_heads=48,
    linear_key_head_dim=128, linear_value_head_dim=128, linear_conv_kernel_dim=4, full_attention_interval=4,
    rope_parameters=dict(rope_type="default", rope_theta=10000000, partial_rotary_factor=0.25),
    max_position_embeddings=262144, tie_word_embeddings=False,
)  # fmt: skip


def _config_folder(tmp_path, name, config):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _blocks_whole(plan, n_layers):
    assert set(plan.device_map) == {"embed", "rotary", "ln_final", "unembed", *(f"blocks.{i}" for i in range(n_layers))}


def test_plan_of_80b_qwen3_next_on_two_gpus_without_weights(tmp_path):
    folder = _config_folder(tmp_path, "Qwen3-Next-80B-A3B", NEXT_80B)
    plan = plan_device_map(folder, max_memory={0: "78GiB", 1: "78GiB", "cpu": "100GiB"}, dtype=torch.bfloat16)
    _blocks_whole(plan, 48)
    assert 79e9 < plan.total_bytes / 2 < 81e9  # ~80B parameters in bfloat16
    assert set(plan.bytes_per_device) == {"0", "1"} and max(plan.bytes_per_device.values()) < 78 * 2**30
    assert "blocks 0-" in str(plan) and "GiB" in str(plan)


def test_plan_of_27b_qwen35_on_one_gpu_and_cli(tmp_path, capsys):
    from gated_interp.cli import main

    folder = _config_folder(tmp_path, "Qwen3.5-27B", QWEN35_27B)
    plan = plan_device_map(folder, max_memory={0: "78GiB", "cpu": "100GiB"}, dtype=torch.bfloat16)
    _blocks_whole(plan, 64)
    assert 26e9 < plan.total_bytes / 2 < 28e9 and set(plan.bytes_per_device) == {"0"}
    # float32 does not fit one 80 GB GPU: the map spills whole blocks to the CPU
    spilled = plan_device_map(folder, max_memory={0: "78GiB", "cpu": "200GiB"}, dtype=torch.float32)
    assert set(spilled.bytes_per_device) == {"0", "cpu"}
    assert main(["info", str(folder), "--plan", "--max-memory", "0=78GiB", "cpu=100GiB"]) == 0
    assert str(plan) in capsys.readouterr().out
