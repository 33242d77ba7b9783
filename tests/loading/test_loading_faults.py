"""Faulty checkpoint folders: each loads exactly the intended weights or stops with a
`CheckpointError` naming the file and the problem.

Every folder is built from the bundled tiny baseline saved with `save_hf` (raw weights), then
broken in one way. "Intended weights" are checked bit for bit against the unbroken folder.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformer_lens import ActivationCache, HookedRootModule

import gated_interp
from gated_interp import CheckpointError, NonFiniteWeightsWarning, ReleaseNotAvailable
from gated_interp.cli import main

EMBED, NORM, HEAD = "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"


def _load(folder: Path, **kwargs) -> gated_interp.HookedGatedQwen3:
    return gated_interp.load_hooked(str(folder), device="cpu", progress=False, fold_ln=False, **kwargs)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """The bundled tiny baseline in the released format, raw (unfolded) weights."""
    model = gated_interp.load_hooked("baseline", size="tiny", device="cpu", progress=False, fold_ln=False)
    return gated_interp.save_hf(model, tmp_path_factory.mktemp("saved") / "baseline")


@pytest.fixture(scope="module")
def original(saved) -> dict[str, torch.Tensor]:
    return dict(_load(saved).state_dict())


@pytest.fixture
def ckpt(saved, tmp_path) -> Path:
    """A fresh copy of the saved checkpoint, to break."""
    return Path(shutil.copytree(saved, tmp_path / "ckpt"))


def _same_weights(model, original) -> bool:
    state = model.state_dict()
    return state.keys() == original.keys() and all(torch.equal(state[k], original[k]) for k in original)


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _rewrite_header(path: Path, change) -> None:
    """Apply `change` to the safetensors header dict, keeping the data bytes as they are."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    change(header)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + raw[8 + length :])


def _set_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is ...:
            config.pop(key, None)
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))


def test_unbroken_copy_loads_the_same_weights(ckpt, original):
    assert _same_weights(_load(ckpt), original)


# ---- safetensors headers ---------------------------------------------------------------------


def test_negative_offsets_are_refused(ckpt):
    _rewrite_header(ckpt / "model.safetensors", lambda h: h[NORM].update(data_offsets=[-64, -64 + 4 * 64]))
    with pytest.raises(CheckpointError, match=r"model\.safetensors is not a readable safetensors file"):
        _load(ckpt)


def test_overlapping_offsets_are_refused(ckpt):
    def overlap(header):  # the final norm's entry points at the first layer's input norm's bytes
        header[NORM]["data_offsets"] = header["model.layers.0.input_layernorm.weight"]["data_offsets"]

    _rewrite_header(ckpt / "model.safetensors", overlap)
    with pytest.raises(CheckpointError, match=r"model\.safetensors is not a readable safetensors file"):
        _load(ckpt)


def test_offsets_past_the_end_are_refused(ckpt):
    def past_end(header):
        start, end = header[NORM]["data_offsets"]
        header[NORM]["data_offsets"] = [start, end + 4096]

    _rewrite_header(ckpt / "model.safetensors", past_end)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        _load(ckpt)


def test_text_file_named_safetensors_is_refused(ckpt):
    (ckpt / "model.safetensors").write_text("these are not weights\n" * 100)
    with pytest.raises(CheckpointError, match=r"model\.safetensors is not a readable safetensors file"):
        _load(ckpt)


def test_truncated_file_is_refused(ckpt):
    path = ckpt / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        _load(ckpt)


_MEMORY_PROBE = textwrap.dedent(
    """
    import resource, sys, time
    from pathlib import Path
    import gated_interp
    from gated_interp.loading import load  # everything imported before the limit
    with open("/proc/self/statm") as f:
        used = int(f.read().split()[0]) * resource.getpagesize()
    limit = used + 512 * 2**20  # 512 MiB above what the interpreter already maps
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    start = time.perf_counter()
    try:
        gated_interp.load_hooked(sys.argv[1], device="cpu", progress=False)
    except gated_interp.CheckpointError as error:
        print("CheckpointError", round(time.perf_counter() - start, 2), str(error)[:200])
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("claim", ["header_length", "tensor_shape"])
def test_header_claiming_gigabytes_fails_fast_in_little_memory(ckpt, claim):
    """A header that claims 1 TiB (as its own length, or as one tensor's size) is refused before
    anything of that size is allocated, under an address-space limit of 512 MiB."""
    path = ckpt / "model.safetensors"
    if claim == "header_length":
        raw = path.read_bytes()
        path.write_bytes(struct.pack("<Q", 2**40) + raw[8:])
    else:
        big = 2**19  # [2^19, 2^19] float32 = 1 TiB
        _rewrite_header(path, lambda h: h[NORM].update(shape=[big, big], data_offsets=[0, 4 * big * big]))
    result = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(ckpt)], capture_output=True, text=True, timeout=120, env=os.environ
    )
    assert result.returncode == 0, result.stderr[-2000:]
    kind, seconds, message = result.stdout.strip().splitlines()[-1].split(" ", 2)
    assert kind == "CheckpointError" and float(seconds) < 5
    assert "model.safetensors" in message and "MemoryError" not in message


# ---- which files ---------------------------------------------------------------------------------


def test_backup_beside_the_weights_is_refused_and_listed(ckpt):
    shutil.copy(ckpt / "model.safetensors", ckpt / "model_backup.safetensors")
    with pytest.raises(CheckpointError) as info:
        _load(ckpt)
    message = str(info.value)
    assert "model.safetensors" in message and "model_backup.safetensors" in message and "no index" in message


def _shard(folder: Path, n: int = 3) -> dict[str, str]:
    """Replace model.safetensors by n shards and an index; returns the weight map."""
    tensors = _tensors(folder)
    (folder / "model.safetensors").unlink()
    names = sorted(tensors)
    weight_map = {}
    for i in range(n):
        file = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        save_file({name: tensors[name] for name in names[i::n]}, str(folder / file), metadata={"format": "pt"})
        weight_map.update({name: file for name in names[i::n]})
    _write_index(folder, weight_map)
    return weight_map


def _write_index(folder: Path, weight_map: dict[str, str]) -> None:
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


def test_sharded_checkpoint_loads_exactly(ckpt, original):
    _shard(ckpt)
    assert _same_weights(_load(ckpt), original)


def test_stray_shard_beside_an_index_is_ignored(ckpt, original, caplog):
    """A leftover shard the index does not name (an older save with more shards) is not read."""
    _shard(ckpt)
    stray = {name: torch.full_like(t, 7.0) for name, t in _tensors_of_shards(ckpt).items()}
    save_file(stray, str(ckpt / "model-00004-of-00004.safetensors"))
    with caplog.at_level(logging.WARNING):
        model = _load(ckpt)
    assert _same_weights(model, original)
    assert "model-00004-of-00004.safetensors" in caplog.text


def _tensors_of_shards(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for path in sorted(folder.glob("model-*.safetensors")):
        out.update(load_file(str(path)))
    return out


def test_old_unsharded_file_beside_shards_is_refused(ckpt):
    old = _tensors(ckpt)
    _shard(ckpt)
    save_file(old, str(ckpt / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"both model\.safetensors and the shards"):
        _load(ckpt)


@pytest.mark.parametrize("target", ["../elsewhere.safetensors", "/tmp/elsewhere.safetensors", "sub/x.safetensors"])
def test_index_naming_a_file_outside_the_folder_is_refused(ckpt, target):
    weight_map = _shard(ckpt)
    weight_map[NORM] = target
    _write_index(ckpt, weight_map)
    with pytest.raises(CheckpointError, match="not a file inside"):
        _load(ckpt)


def test_missing_shard_is_refused(ckpt):
    _shard(ckpt)
    (ckpt / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"shard model-00002-of-00003\.safetensors .* is missing"):
        _load(ckpt)


def test_tensor_in_two_shards_is_refused(ckpt):
    weight_map = _shard(ckpt)
    first = ckpt / weight_map[NORM]
    other = next(ckpt / f for f in sorted(set(weight_map.values())) if ckpt / f != first)
    save_file({**load_file(str(other)), NORM: torch.zeros(load_file(str(first))[NORM].shape)}, str(other))
    with pytest.raises(CheckpointError, match=r"model\.norm\.weight is stored in two files"):
        _load(ckpt)


def test_index_pointing_at_the_wrong_shard_is_refused(ckpt):
    weight_map = _shard(ckpt)
    right = weight_map[NORM]
    weight_map[NORM] = next(f for f in sorted(set(weight_map.values())) if f != right)
    _write_index(ckpt, weight_map)
    with pytest.raises(CheckpointError, match=r"index says tensor model\.norm\.weight is in"):
        _load(ckpt)


def test_index_with_a_tensor_claimed_twice_is_refused(ckpt):
    weight_map = _shard(ckpt)
    files = sorted(set(weight_map.values()))
    body = json.dumps({"weight_map": weight_map})[:-2]  # the same key twice, with different shards
    body += f', "{NORM}": "{files[0] if weight_map[NORM] != files[0] else files[1]}"' + "}}"
    (ckpt / "model.safetensors.index.json").write_text(body)
    with pytest.raises(CheckpointError, match="claimed by two shards"):
        _load(ckpt)


# ---- dtypes and values ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.bool, torch.uint8])
def test_non_float_weights_are_refused(ckpt, dtype):
    tensors = _tensors(ckpt)
    tensors[NORM] = tensors[NORM].to(dtype)
    save_file(tensors, str(ckpt / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"not floating point, e\.g\. model\.norm\.weight"):
        _load(ckpt)


def test_nan_and_inf_weights_warn_by_name_and_info_shows_them(ckpt, capsys):
    tensors = _tensors(ckpt)
    tensors[NORM][3] = float("nan")
    tensors["model.layers.1.mlp.up_proj.weight"][0, 0] = float("inf")
    save_file(tensors, str(ckpt / "model.safetensors"))
    with pytest.warns(NonFiniteWeightsWarning) as record:
        _load(ckpt)
    message = str(record[0].message)
    assert "2 tensor(s)" in message and NORM in message and "model.layers.1.mlp.up_proj.weight" in message
    assert main(["info", str(ckpt)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("non-finite"))
    assert "2 hold NaN or Inf" in row and NORM in row


def test_info_of_clean_weights_says_none(ckpt, capsys):
    assert main(["info", str(ckpt)]) == 0
    assert "none (no NaN or Inf)" in capsys.readouterr().out


def test_tied_config_with_a_different_lm_head_is_refused(ckpt):
    tensors = _tensors(ckpt)
    assert not torch.equal(tensors[HEAD], tensors[EMBED])  # the saved baseline is untied
    _set_config(ckpt, tie_word_embeddings=True)
    with pytest.raises(CheckpointError, match=r"tie_word_embeddings true, but the stored lm_head\.weight differs"):
        _load(ckpt)


def test_tied_config_with_an_equal_lm_head_copy_loads(ckpt, original):
    tensors = _tensors(ckpt)
    tensors[HEAD] = tensors[EMBED].clone()
    save_file(tensors, str(ckpt / "model.safetensors"))
    _set_config(ckpt, tie_word_embeddings=True)
    model = _load(ckpt)
    assert model.cfg.tie_word_embeddings and torch.equal(model.W_U, original["embed.W_E"].T)


# ---- config.json ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("num_key_value_heads", 0, "num_key_value_heads must be a whole number >= 1, got 0"),
        ("num_hidden_layers", 2.0, "num_hidden_layers must be a whole number >= 1, got 2.0"),
        ("num_hidden_layers", -1, "num_hidden_layers must be a whole number >= 1, got -1"),
        ("hidden_size", "128", "hidden_size must be a whole number >= 1, got '128'"),
        ("vocab_size", True, "vocab_size must be a whole number >= 1, got True"),
        ("rms_norm_eps", float("nan"), "rms_norm_eps must be a finite number > 0, got nan"),
        ("rms_norm_eps", -1e-6, "rms_norm_eps must be a finite number > 0, got -1e-06"),
        ("rms_norm_eps", 1e30, "rms_norm_eps must be at most 0.01"),
        ("rope_theta", -10000.0, "rope_theta must be a finite number > 0, got -10000.0"),
        ("rope_scaling", "linear", "rope_scaling must be an object"),
        ("rope_scaling", {"rope_type": "linear", "factor": -2}, "rope_scaling.factor must be a finite number > 0"),
        ("use_qk_norm", "false", "use_qk_norm must be true or false, got 'false'"),
        ("num_attention_heads", 5, "num_attention_heads (5) must be a multiple of num_key_value_heads"),
    ],
)
def test_bad_config_values_are_refused(ckpt, key, value, expected):
    _set_config(ckpt, **{key: value})
    with pytest.raises(CheckpointError) as info:
        _load(ckpt)
    assert expected in str(info.value)


def test_config_json_that_is_a_list_is_refused(ckpt):
    (ckpt / "config.json").write_text("[1, 2, 3]")
    with pytest.raises(CheckpointError, match=r"config\.json holds a JSON list, not an object"):
        _load(ckpt)


def test_missing_rope_theta_takes_hugging_faces_default(ckpt):
    """Without rope_theta, the model equals Hugging Face's Qwen3 loaded from the same folder."""
    transformers = pytest.importorskip("transformers")
    _set_config(ckpt, rope_theta=..., rope_scaling=...)
    ours = _load(ckpt)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=torch.float32).eval()
    assert ours.cfg.rope_theta == 10_000.0
    tokens = torch.arange(1, 33)[None]
    with torch.no_grad():
        difference = (ours(tokens) - theirs(tokens).logits).abs().max().item()
    assert difference < 1e-4  # float32, same arithmetic in another order


# ---- pytorch_model.bin ---------------------------------------------------------------------------


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {_Evil.marker}",))


def test_malicious_pickle_is_refused_and_never_runs(ckpt, tmp_path):
    _Evil.marker = tmp_path / "PICKLE_CODE_RAN"
    state = _tensors(ckpt)
    state["payload"] = _Evil()
    (ckpt / "model.safetensors").unlink()
    torch.save(state, ckpt / "pytorch_model.bin")
    with pytest.raises(CheckpointError) as info:
        _load(ckpt)
    message = str(info.value)
    assert "pytorch_model.bin holds code or Python objects that are not tensors, and will not be loaded" in message
    assert "weights_only=False" not in message
    assert not _Evil.marker.exists()


@pytest.mark.parametrize("zipfile", [True, False], ids=["zip", "legacy"])
def test_bin_weights_load_exactly(ckpt, original, zipfile):
    state = _tensors(ckpt)
    (ckpt / "model.safetensors").unlink()
    torch.save(state, ckpt / "pytorch_model.bin", _use_new_zipfile_serialization=zipfile)
    assert _same_weights(_load(ckpt), original)


def test_sharded_bin_with_index_loads_exactly(ckpt, original):
    tensors = _tensors(ckpt)
    (ckpt / "model.safetensors").unlink()
    names = sorted(tensors)
    weight_map = {}
    for i in range(2):
        file = f"pytorch_model-{i + 1:05d}-of-00002.bin"
        torch.save({name: tensors[name] for name in names[i::2]}, ckpt / file)
        weight_map.update({name: file for name in names[i::2]})
    (ckpt / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert _same_weights(_load(ckpt), original)


def test_text_file_named_bin_is_refused(ckpt):
    (ckpt / "model.safetensors").unlink()
    (ckpt / "pytorch_model.bin").write_text("not a pickle")
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin is not a readable PyTorch weights file"):
        _load(ckpt)


def test_bin_holding_a_list_is_refused(ckpt):
    (ckpt / "model.safetensors").unlink()
    torch.save([torch.zeros(2)], ckpt / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="does not hold a state dict"):
        _load(ckpt)


# ---- tokenizer ---------------------------------------------------------------------------------


def test_broken_tokenizer_error_names_the_file(ckpt):
    (ckpt / "tokenizer.json").write_text("{ not json")
    with pytest.raises(CheckpointError, match=r"tokenizer\.json: the tokenizer files .* cannot be loaded"):
        _load(ckpt)


# ---- save_hf -------------------------------------------------------------------------------------


def test_save_to_empty_path_is_refused(saved):
    with pytest.raises(CheckpointError, match="empty path"):
        gated_interp.save_hf(_load(saved), "")


def test_save_fp16_out_of_range_is_refused(saved, tmp_path):
    model = _load(saved)
    with torch.no_grad():
        model.ln_final.w[0] = 1e5
    with pytest.raises(CheckpointError, match=r"ln_final\.w holds values up to 1e\+05, beyond float16's range"):
        gated_interp.save_hf(model, tmp_path / "out", dtype=torch.float16)
    assert not (tmp_path / "out").exists()


def test_failed_save_leaves_the_previous_checkpoint_whole(saved, ckpt, original, monkeypatch):
    from gated_interp.loading import save as save_module

    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(save_module, "save_file", disk_full)
    with pytest.raises(CheckpointError, match="No space left on device.*left as it was"):
        gated_interp.save_hf(_load(saved), ckpt)
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before
    assert [p.name for p in ckpt.parent.iterdir()] == [ckpt.name]  # no temporary folder left
    assert _same_weights(_load(ckpt), original)


def test_save_replaces_old_shards_and_tokenizer_but_keeps_other_files(saved, ckpt, original):
    _shard(ckpt)
    (ckpt / "README.md").write_text("my notes\n")
    model = _load(saved)
    model.tokenizer = None
    gated_interp.save_hf(model, ckpt)
    assert sorted(p.name for p in ckpt.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert (ckpt / "README.md").read_text() == "my notes\n"
    assert _same_weights(_load(ckpt), original)


# ---- released models offline; the command line ---------------------------------------------------


@pytest.fixture
def offline(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("GATED_INTERP_CHECKPOINTS", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_hub"))


def test_released_model_offline_is_one_error_with_both_ways_out(offline):
    with pytest.raises(ReleaseNotAvailable) as info:
        gated_interp.load_hooked("gate_headwise")
    message = str(info.value)
    assert "hf download QwQZh/gated_attention --include '1B_gate_headwise/*'" in message
    assert 'size="tiny"' in message and "GATED_INTERP_CHECKPOINTS" in message
    assert "huggingface-cli" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_cli_released_model_offline_speaks_of_flags(offline, capsys):
    assert main(["info", "gate_headwise", "--size", "1B"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--size tiny" in err and "hf download" in err and "size=" not in err


def test_cli_bad_checkpoint_is_one_line_exit_1(ckpt, capsys):
    _set_config(ckpt, num_key_value_heads=0)
    assert main(["info", str(ckpt)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: config.json: num_key_value_heads") and err.count("\n") == 1


def test_cli_any_exception_is_one_line_exit_1(ckpt, capsys, monkeypatch):
    from gated_interp.loading import inspect

    def broken(*args, **kwargs):
        raise KeyError("something unforeseen\nover two lines")

    monkeypatch.setattr(inspect, "describe_checkpoint", broken)
    assert main(["info", str(ckpt)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: KeyError:") and err.count("\n") == 1 and "Traceback" not in err


def test_cli_help_does_not_import_torch():
    probe = (
        "import sys\nfrom gated_interp.cli import main\ncode = main(['--help'])\n"
        "assert code == 0, code\nassert 'torch' not in sys.modules, 'torch was imported'\n"
        "import gated_interp\nassert 'torch' not in sys.modules\nprint('ok')"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]


def test_every_package_export_is_the_object_its_module_defines():
    """`gated_interp.X` (imported lazily) is the very object of the module `_LAZY` names, and a
    class or function was defined there, not merely re-exported from somewhere else."""
    import importlib

    assert sorted(gated_interp.__all__) == sorted(gated_interp._LAZY)
    for name in gated_interp.__all__:
        module = importlib.import_module(gated_interp._LAZY[name])
        exported = getattr(gated_interp, name)
        assert exported is getattr(module, name), f"gated_interp.{name} is not {module.__name__}.{name}"
        if isinstance(exported, type) or callable(exported):
            assert (exported.__module__, exported.__name__) == (module.__name__, name)
        assert name in dir(gated_interp)
    from gated_interp import GatedActivationCache, HookedGatedQwen3, load_hooked

    assert issubclass(HookedGatedQwen3, HookedRootModule) and issubclass(GatedActivationCache, ActivationCache)
    assert load_hooked is gated_interp.loading.load.load_hooked
    assert issubclass(CheckpointError, Exception) and issubclass(NonFiniteWeightsWarning, Warning)
    assert set(gated_interp.VARIANTS) == {"baseline", "gate_headwise", "gate_elementwise"}
    with pytest.raises(AttributeError, match="no attribute 'not_an_export'"):
        gated_interp.not_an_export  # noqa: B018
