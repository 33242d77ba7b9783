"""Loading and saving checkpoints in the released Hugging Face format, and every loading error.

Numerical tolerance where a loaded model is compared with tests/reference.py: 1e-4 absolute on
float32 logits (same arithmetic in a different order gives ~1e-6). save → load round trips are
compared exactly: they must not change a single bit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from helpers import gate_overrides, make_tiny, make_tiny_with_tokenizer, without_shape_checks, write_checkpoint
from reference import random_released_checkpoint, reference_logits, tiny_config
from safetensors.torch import load_file

import gated_interp
from gated_interp import CheckpointError

TOL = 1e-4


def _tokens(vocab: int, batch: int = 2, pos: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, pos), generator=torch.Generator().manual_seed(seed))


def _load(folder, **kwargs):
    return gated_interp.load_hooked(str(folder), device="cpu", progress=False, **kwargs)


def _assert_matches_reference(model, config, sd, tol=TOL):
    tokens = _tokens(config["vocab_size"])
    with torch.no_grad():
        ours = model(tokens)
    theirs = reference_logits(config, {k: v.float() for k, v in sd.items()}, tokens)
    assert ours.std() > 0.1
    assert (ours.float() - theirs).abs().max().item() <= tol


# ---- save_hf → load_hooked ---------------------------------------------------------------------


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_save_then_load_is_identity(tmp_path, gate, bias, tied):
    _, config, _ = make_tiny(tmp_path / "orig", gate=gate, seed=1, qkv_bias=bias, tie_word_embeddings=tied)
    model = _load(tmp_path / "orig", fold_ln=False)  # raw weights: the file's own (folding unties W_U)
    gated_interp.save_hf(model, tmp_path / "saved")
    again = _load(tmp_path / "saved", fold_ln=False)
    ours, theirs = dict(model.named_parameters()), dict(again.named_parameters())
    assert ours.keys() == theirs.keys()
    assert ("blocks.0.attn.W_G" in ours) == (gate != "none")
    assert ("blocks.0.attn.b_Q" in ours) == bias
    for name in ours:
        assert ours[name].dtype == theirs[name].dtype
        assert torch.equal(ours[name], theirs[name]), name
    assert again.cfg.gate == gate and again.cfg.qkv_bias == bias and again.cfg.tie_word_embeddings == tied
    tokens = _tokens(config["vocab_size"])
    with torch.no_grad():
        assert torch.equal(model(tokens), again(tokens))
    saved_config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert saved_config["headwise_attn_output_gate"] == (gate == "headwise")
    assert saved_config["elementwise_attn_output_gate"] == (gate == "elementwise")
    assert saved_config["qkv_bias"] == bias
    assert ("lm_head.weight" in load_file(tmp_path / "saved" / "model.safetensors")) == (not tied)


@pytest.mark.parametrize("n_kv", [1, 2, 4])
def test_save_writes_released_q_proj_layout(tmp_path, gate, n_kv):
    """q_proj rows per kv group: the queries of the group's heads (head-major), then their gate
    logits (head-major); built here with explicit loops from W_Q/W_G."""
    _, config, sd = make_tiny(tmp_path / "orig", gate=gate, seed=2, qkv_bias=True, num_key_value_heads=n_kv)
    model = _load(tmp_path / "orig", fold_ln=False)  # raw weights, so the saved file is the original
    gated_interp.save_hf(model, tmp_path / "saved")
    saved = load_file(tmp_path / "saved" / "model.safetensors")
    h = config["num_attention_heads"]
    n_rep = h // n_kv
    for i, block in enumerate(model.blocks):
        attn = block.attn
        rows, bias_rows = [], []
        for group in range(n_kv):
            heads = range(group * n_rep, (group + 1) * n_rep)
            for j in heads:
                rows.append(attn.W_Q[j].T)  # [d_head, d_model]
                bias_rows.append(attn.b_Q[j])
            if gate != "none":
                for j in heads:
                    rows.append(attn.W_G[j].T)  # [gate, d_model]
                    bias_rows.append(attn.b_G[j])
        key = f"model.layers.{i}.self_attn.q_proj"
        assert torch.equal(saved[key + ".weight"], torch.cat(rows).detach())
        assert torch.equal(saved[key + ".bias"], torch.cat(bias_rows).detach())
        # and the file is exactly the checkpoint we loaded from
        assert torch.equal(saved[key + ".weight"], sd[key + ".weight"])
    assert saved.keys() == sd.keys()
    for name in sd:
        assert torch.equal(saved[name], sd[name]), name


# ---- checkpoint formats -----------------------------------------------------------------------


def test_hand_built_release_style_checkpoint_never_runs_its_code(tmp_path):
    """bf16 pytorch_model.bin, tied embeddings (no lm_head.weight, no tie key), model_type qwen2,
    no use_qk_norm / qkv_bias keys, an auto_map and a Python file that would leave a marker."""
    config = tiny_config(**gate_overrides("headwise"), model_type="qwen2", architectures=["Qwen2ForCausalLM"])
    for key in ("use_qk_norm", "qkv_bias", "tie_word_embeddings"):
        del config[key]
    config["auto_map"] = {
        "AutoConfig": "modeling_evil.EvilConfig",
        "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM",
    }
    config["torch_dtype"] = "bfloat16"
    ref_config = dict(config, tie_word_embeddings=True)
    sd = random_released_checkpoint(ref_config, seed=3, dtype=torch.bfloat16)
    assert "lm_head.weight" not in sd
    folder = tmp_path / "release"
    write_checkpoint(folder, config, sd, fmt="bin")
    marker = tmp_path / "EVIL_CODE_RAN"
    (folder / "modeling_evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\nraise RuntimeError('evil code ran')\n"
    )
    model = _load(folder, fold_ln=False)  # raw weights: folding ln_final.w would untie W_U
    assert not marker.exists()
    assert model.cfg.gate == "headwise"
    assert model.cfg.tie_word_embeddings and model.cfg.use_qk_norm and not model.cfg.qkv_bias
    assert model.W_E.dtype == torch.float32  # default analysis dtype, whatever is on disk
    assert torch.equal(model.W_U, model.W_E.T)
    # bf16 weights upcast exactly, so float32 arithmetic matches the reference on the same values
    _assert_matches_reference(model, ref_config, sd)
    assert not marker.exists()


def test_sharded_safetensors_with_index(tmp_path, gate):
    config = tiny_config(**gate_overrides(gate), qkv_bias=True, num_hidden_layers=3)
    sd = random_released_checkpoint(config, seed=4)
    folder = write_checkpoint(tmp_path / "sharded", config, sd, fmt="sharded")
    assert len(list(folder.glob("*.safetensors"))) == 3
    assert (folder / "model.safetensors.index.json").is_file()
    model = _load(folder)
    _assert_matches_reference(model, config, sd)


def test_safetensors_and_bin_give_the_same_model(tmp_path):
    config = tiny_config(**gate_overrides("elementwise"))
    sd = random_released_checkpoint(config, seed=5)
    a = _load(write_checkpoint(tmp_path / "a", config, sd, fmt="safetensors"))
    b = _load(write_checkpoint(tmp_path / "b", config, sd, fmt="bin"))
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), name


def test_load_in_bfloat16(tmp_path, gate):
    config = tiny_config(**gate_overrides(gate), qkv_bias=True)
    sd = random_released_checkpoint(config, seed=6)
    write_checkpoint(tmp_path / "ckpt", config, sd)
    model = _load(tmp_path / "ckpt", dtype=torch.bfloat16)
    assert model.cfg.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    # bf16 has ~3 significant digits: logits agree with the fp32 reference only roughly
    _assert_matches_reference(model, config, sd, tol=0.15)


@pytest.mark.parametrize(
    "rope_parameters, rope_scaling",
    [
        ({"rope_type": "default", "rope_theta": 12345.0}, None),
        ({"rope_type": "linear", "factor": 2.0, "rope_theta": 12345.0}, {"rope_type": "linear", "factor": 2.0}),
    ],
    ids=["default", "linear"],
)
def test_rope_parameters_style_config(tmp_path, rope_parameters, rope_scaling):
    """transformers 5 writes rope_theta inside rope_parameters; old style has rope_theta/rope_scaling."""
    old_style = tiny_config(**gate_overrides("headwise"), rope_theta=12345.0, rope_scaling=rope_scaling)
    new_style = dict(old_style, rope_parameters=rope_parameters)
    del new_style["rope_theta"], new_style["rope_scaling"]
    sd = random_released_checkpoint(old_style, seed=7)
    model = _load(write_checkpoint(tmp_path / "ckpt", new_style, sd))
    assert model.cfg.rope_theta == 12345.0
    tokens = _tokens(old_style["vocab_size"], pos=12)
    with torch.no_grad():
        ours = model(tokens)
    assert (ours - reference_logits(old_style, sd, tokens)).abs().max().item() <= TOL
    # and the theta matters: the default theta would give other logits
    assert (ours - reference_logits(dict(old_style, rope_theta=1e6), sd, tokens)).abs().max().item() > 1e-3


# ---- errors ------------------------------------------------------------------------------------


@pytest.fixture
def no_model_build(monkeypatch):
    """Make building the model fail loudly, to prove an error is raised before any heavy work."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was built before the checkpoint was validated")

    monkeypatch.setattr("gated_interp.loading.load.HookedGatedQwen3", refuse)


def _valid_checkpoint(**overrides):
    config = tiny_config(**overrides)
    sd = random_released_checkpoint(config, seed=8)
    return config, sd


def test_error_unknown_variant_lists_valid_ones(no_model_build):
    with pytest.raises(CheckpointError) as info:
        gated_interp.load_hooked("gate_headwize")
    for variant in gated_interp.VARIANTS:
        assert variant in str(info.value)
    assert isinstance(info.value, ValueError)


def test_error_bad_size():
    with pytest.raises(CheckpointError, match="size"):
        gated_interp.load_hooked("gate_headwise", size="7B")


def test_error_missing_folder(tmp_path, no_model_build):
    with pytest.raises(CheckpointError, match="does not exist"):
        _load(tmp_path / "no_such_checkpoint")


def test_error_missing_config_json(tmp_path, no_model_build):
    config, sd = _valid_checkpoint()
    write_checkpoint(tmp_path / "ckpt", config, sd)
    (tmp_path / "ckpt" / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json"):
        _load(tmp_path / "ckpt")


def test_error_no_weights_file(tmp_path, no_model_build):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(tiny_config()))
    with pytest.raises(CheckpointError, match="no weights"):
        _load(tmp_path / "ckpt")


def test_error_both_gate_flags(tmp_path, no_model_build):
    config, sd = _valid_checkpoint(headwise_attn_output_gate=True)
    config["elementwise_attn_output_gate"] = True
    write_checkpoint(tmp_path / "ckpt", config, sd)
    with pytest.raises(CheckpointError) as info:
        _load(tmp_path / "ckpt")
    assert "headwise_attn_output_gate" in str(info.value) and "elementwise_attn_output_gate" in str(info.value)


def test_error_wrong_shape_names_tensor_and_shapes(tmp_path, no_model_build):
    config, sd = _valid_checkpoint()
    name = "model.layers.1.self_attn.k_proj.weight"
    sd[name] = torch.zeros(3 * config["head_dim"], config["hidden_size"])  # 3 kv heads instead of 2
    write_checkpoint(tmp_path / "ckpt", config, sd)
    with pytest.raises(CheckpointError) as info:
        _load(tmp_path / "ckpt")
    message = str(info.value)
    assert name in message
    assert "[48, 64]" in message and "[32, 64]" in message  # found, expected


def test_error_gate_flag_without_gate_rows_mentions_q_proj(tmp_path, no_model_build):
    """An ungated checkpoint whose config claims a gate: q_proj has too few rows."""
    config, sd = _valid_checkpoint()
    write_checkpoint(tmp_path / "ckpt", dict(config, elementwise_attn_output_gate=True), sd)
    with pytest.raises(CheckpointError) as info:
        _load(tmp_path / "ckpt")
    assert "q_proj" in str(info.value) and "[64, 64]" in str(info.value) and "[128, 64]" in str(info.value)


def test_error_missing_tensor(tmp_path, no_model_build):
    config, sd = _valid_checkpoint()
    del sd["model.layers.0.mlp.up_proj.weight"]
    write_checkpoint(tmp_path / "ckpt", config, sd)
    with pytest.raises(CheckpointError, match=r"model\.layers\.0\.mlp\.up_proj\.weight"):
        _load(tmp_path / "ckpt")


def test_error_unexpected_tensor(tmp_path, no_model_build):
    config, sd = _valid_checkpoint()
    sd["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(64)  # bias, but qkv_bias is false
    write_checkpoint(tmp_path / "ckpt", config, sd)
    with pytest.raises(CheckpointError, match=r"model\.layers\.0\.self_attn\.q_proj\.bias"):
        _load(tmp_path / "ckpt")


def test_error_hub_unreachable_and_nothing_cached(tmp_path, monkeypatch, no_model_build):
    from huggingface_hub import constants

    empty = tmp_path / "hf_home"
    empty.mkdir()
    monkeypatch.delenv("GATED_INTERP_CHECKPOINTS", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(empty))
    monkeypatch.setenv("HF_HUB_CACHE", str(empty / "hub"))
    # huggingface_hub reads these variables once, at import: patch its constants as well
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(empty / "hub"))
    with pytest.raises(CheckpointError) as info:
        gated_interp.load_hooked("gate_headwise")
    assert "GATED_INTERP_CHECKPOINTS" in str(info.value)
    assert "1B_gate_headwise" in str(info.value)


def test_error_mirror_folder_without_variant(tmp_path, monkeypatch, no_model_build):
    (tmp_path / "mirror" / "1B_baseline").mkdir(parents=True)
    monkeypatch.setenv("GATED_INTERP_CHECKPOINTS", str(tmp_path / "mirror"))
    with pytest.raises(CheckpointError) as info:
        gated_interp.load_hooked("gate_elementwise")
    assert "1B_gate_elementwise" in str(info.value) and "GATED_INTERP_CHECKPOINTS" in str(info.value)


def test_mirror_folder_loads(tmp_path, monkeypatch):
    config = tiny_config(**gate_overrides("elementwise"))
    sd = random_released_checkpoint(config, seed=9)
    write_checkpoint(tmp_path / "mirror" / "1B_gate_elementwise", config, sd)
    monkeypatch.setenv("GATED_INTERP_CHECKPOINTS", str(tmp_path / "mirror"))
    model = gated_interp.load_hooked("gate_elementwise", device="cpu", progress=False)
    assert model.cfg.gate == "elementwise"
    _assert_matches_reference(model, config, sd)


@pytest.mark.parametrize("bad", [101, 1000, -1])
def test_error_token_outside_vocabulary(tiny_model, bad):
    model, config, _ = tiny_model
    assert config["vocab_size"] == 101
    with pytest.raises(ValueError, match="vocabulary"):
        model(torch.tensor([[0, 5, bad]]))


def test_error_empty_token_tensor(tiny_model):
    model, _, _ = tiny_model
    with pytest.raises(ValueError, match="empty"):
        model(torch.zeros(2, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="empty"):
        model(torch.zeros(0, dtype=torch.long))
    with without_shape_checks(), pytest.raises(ValueError, match="integer"):
        model(torch.zeros(1, 3))  # float "tokens"


def test_error_empty_prompt(tmp_path, bpe_tokenizer):
    model, _, _ = make_tiny_with_tokenizer(tmp_path / "ckpt", bpe_tokenizer)
    with pytest.raises(ValueError, match="empty"):
        model("", prepend_bos=False)
    with pytest.raises(ValueError, match="empty"):
        model(["some text", ""], prepend_bos=False)
    with pytest.raises(ValueError):
        model.to_tokens([])
    # even when a BOS token would be prepended: an empty prompt is almost always a bug upstream
    with pytest.raises(ValueError, match="empty"):
        model("")
    # sampling from the BOS alone is what generate("") is for
    assert isinstance(model.generate("", max_new_tokens=2, verbose=False), str)


def test_folder_path_wins_over_mirror_env(tmp_path, monkeypatch):
    """A folder path always wins over GATED_INTERP_CHECKPOINTS."""
    monkeypatch.setenv("GATED_INTERP_CHECKPOINTS", os.fspath(tmp_path / "nowhere"))
    config = tiny_config()
    sd = random_released_checkpoint(config, seed=10)
    model = _load(write_checkpoint(tmp_path / "ckpt", config, sd))
    assert model.cfg.gate == "none"
    assert Path(model.cfg.model_name).name == "ckpt"
