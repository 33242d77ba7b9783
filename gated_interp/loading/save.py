"""`save_hf`: a `HookedGatedQwen3` → a folder in the authors' released checkpoint format."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from gated_interp.loading.errors import CheckpointError
from gated_interp.loading.hf_config import hf_config_from
from gated_interp.loading.state_dict import ours_to_hf
from gated_interp.model import HookedGatedQwen3

_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def save_hf(model: HookedGatedQwen3, folder: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
    """Write config.json (with the gate flags), model.safetensors (interleaved `q_proj`) and the
    tokenizer files. `dtype` defaults to the model's, so that save → load is exact."""
    cfg = model.cfg
    dtype = dtype or cfg.dtype
    if dtype not in _DTYPE_NAMES:
        raise CheckpointError(f"save dtype must be one of {list(_DTYPE_NAMES)}, got {dtype}")
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CheckpointError(f"cannot create the output folder {folder}: {error}") from error

    params = {name: p.detach() for name, p in model.named_parameters()}
    _refuse_unsaved_biases(model, params)
    tensors = {name: t.to("cpu", dtype).contiguous() for name, t in ours_to_hf(params, cfg)}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = hf_config_from(cfg, torch_dtype=_DTYPE_NAMES[dtype])
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(str(folder))
    return folder


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
