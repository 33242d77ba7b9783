"""`save_hf`: a `HookedGatedQwen3` → a folder in the authors' released checkpoint format."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from gated_interp.devices import named_parameter_values
from gated_interp.loading import hybrid
from gated_interp.loading.errors import CheckpointError
from gated_interp.loading.hf_config import hf_config_from
from gated_interp.loading.state_dict import ours_to_hf
from gated_interp.model import HookedGatedQwen3

_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def save_hf(model: HookedGatedQwen3, folder: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
    """Write config.json (with the gate flags), model.safetensors (interleaved `q_proj`) and the
    tokenizer files; a Qwen3.5 / Qwen3-Next model in its own family's layout (a vision-language
    one as its text-only family: the vision tower was never loaded). `dtype` defaults to the
    model's, so that save → load is exact.

    All or nothing: everything is written into a temporary sibling folder, which then replaces
    `folder`; a failure leaves the previous checkpoint as it was. Weight files, shards, indexes and
    tokenizer files of a previous checkpoint in `folder` are not carried over (other files, e.g. a
    README, are)."""
    cfg = model.cfg
    dtype = dtype or cfg.dtype
    if dtype not in _DTYPE_NAMES:
        raise CheckpointError(f"save dtype must be one of {list(_DTYPE_NAMES)}, got {dtype}")
    if not str(folder).strip():
        raise CheckpointError("save_hf needs a folder to write to, got an empty path")
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"cannot save to {folder}: it is a file, not a folder")

    params = dict(named_parameter_values(model))  # a dispatched model's offloaded weights read back
    _refuse_unsaved_biases(model, params)
    if dtype == torch.float16:
        _refuse_fp16_overflow(params)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.saving-", dir=folder.parent))
    except OSError as error:
        raise CheckpointError(f"cannot create the output folder {folder}: {error}") from None
    try:
        if hybrid.is_hybrid_family(cfg):  # Qwen3.5 / Qwen3-Next: their own names and config keys (loading/hybrid.py)
            config = hybrid.hf_config_for_save(cfg, _DTYPE_NAMES[dtype])
            if cfg.gate == "none":  # the format always gates: a neutral gate stands in (hybrid.UNGATED_KEY)
                pairs = hybrid.to_hf(hybrid.with_neutral_gate(params, cfg), cfg)
            else:
                pairs = hybrid.to_hf(params, cfg)
        else:
            pairs, config = ours_to_hf(params, cfg), hf_config_from(cfg, torch_dtype=_DTYPE_NAMES[dtype])
        tensors = {name: t.to("cpu", dtype).contiguous() for name, t in pairs}
        save_file(tensors, str(staging / "model.safetensors"), metadata={"format": "pt"})
        del tensors
        (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if model.tokenizer is not None:
            model.tokenizer.save_pretrained(str(staging))
        if folder.is_dir():
            _carry_other_files(folder, staging)
        _replace(folder, staging)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, OSError):
            raise CheckpointError(f"cannot save to {folder}: {error}; the folder was left as it was") from None
        raise
    return folder


# Files of a previous checkpoint that a save replaces (never carried over into the new one).
_CHECKPOINT_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
)
_CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".index.json", ".pt", ".pth", ".ckpt")


def _carry_other_files(old: Path, new: Path) -> None:
    for path in old.iterdir():
        if path.name in _CHECKPOINT_FILES or path.name.endswith(_CHECKPOINT_SUFFIXES) or (new / path.name).exists():
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.copytree(path, new / path.name, symlinks=True)
        else:
            shutil.copy2(path, new / path.name, follow_symlinks=False)


def _replace(folder: Path, staging: Path) -> None:
    """Move the finished `staging` folder to `folder`; an old `folder` is moved aside first and
    removed only once the new one is in place."""
    if not folder.exists():
        staging.rename(folder)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
    old.rmdir()
    folder.rename(old)
    try:
        staging.rename(folder)
    except OSError:
        old.rename(folder)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _refuse_fp16_overflow(params: dict[str, torch.Tensor]) -> None:
    limit = torch.finfo(torch.float16).max
    for name, tensor in params.items():
        if tensor.is_floating_point() and tensor.numel() and float(tensor.abs().max()) > limit:
            raise CheckpointError(
                f"{name} holds values up to {float(tensor.abs().max()):.4g}, beyond float16's range "
                f"(±{limit:g}): saving in float16 would turn them into inf. Save in bfloat16 or float32"
            )


def _refuse_unsaved_biases(model: HookedGatedQwen3, params: dict[str, torch.Tensor]) -> None:
    """Biases the format has no place for (all of them without `qkv_bias`; the MLP's and `b_U`
    always) are zero buffers; one that is not zero would be silently dropped, so refuse."""
    for name, tensor in model.state_dict().items():
        if name not in params and name.rsplit(".", 1)[-1].lstrip("_").startswith("b_") and bool(tensor.any()):
            raise CheckpointError(
                f"{name} is non-zero, but the released format has no place for it (config qkv_bias="
                f"{model.cfg.qkv_bias}; MLP and unembedding biases are never stored): saving would drop "
                "it. Zero it, or for attention biases build the model with qkv_bias=True."
            )
