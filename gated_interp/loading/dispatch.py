"""Load a checkpoint across devices with accelerate's big-model inference.

The model is built on the meta device (`device_map.empty_model`), each unit (`embed`, a block,
`ln_final`, `unembed`) gets one device (`device_map.infer_device_map`), and the checkpoint is
read one unit at a time: its tensors are converted into that unit's parameters on the CPU, its
norms folded (`fold_ln`, the same functions as `process_weights_`, one block at a time), and the
unit is moved to its device or written to `offload_folder` (disk). Host memory therefore holds one
unit at a time (plus whatever the map itself puts on the CPU), never the model. `dispatch_model`
then attaches accelerate's hooks, which move each block's inputs to its device and bring
offloaded weights in for its forward pass only.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gated_interp.config import GatedQwen3Config
from gated_interp.loading.device_map import DeviceMapSpec, computes_on, empty_model, infer_device_map, main_device
from gated_interp.weight_processing import (
    center_unembed_updates,
    fold_block_norms_updates,
    fold_final_norm_updates,
    identity_norm_weight,
)

# HF tensor → [(our parameter, expert index or None, its value)].
Convert = Callable[[str, Tensor], Iterable[tuple[str, "int | None", Tensor]]]
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def unit_of(hf_name: str) -> str:
    """Which unit a checkpoint tensor belongs to, from its name in either layout."""
    if match := _LAYER.search(hf_name):
        return f"blocks.{match[1]}"
    if hf_name.endswith("embed_tokens.weight"):
        return "embed"
    if hf_name == "lm_head.weight":
        return "unembed"
    if hf_name.endswith("norm.weight"):
        return "ln_final"
    raise ValueError(f"no unit holds checkpoint tensor {hf_name}")  # a table row this module does not know


def load_dispatched(
    cfg: GatedQwen3Config,
    tokenizer: Any,
    names: set[str],
    get: Callable[[str], Tensor],
    convert: Convert,
    *,
    device_map: DeviceMapSpec,
    max_memory: dict[Any, Any] | None,
    offload_folder: str | Path | None,
    fold_ln: bool,
    center_unembed: bool,
    progress_names: Callable[[list[str]], Iterable[str]],
    on_tensor: Callable[[str, Tensor], None],
) -> Any:
    """The dispatched model; `names` are the checkpoint tensors to read (checked by the caller),
    `get` reads one, `convert` turns it into our parameters, `on_tensor` sees each as read."""
    from accelerate import dispatch_model
    from accelerate.utils import offload_weight, save_offload_index, set_module_tensor_to_device

    model = empty_model(cfg, tokenizer)
    placement = infer_device_map(model, device_map, max_memory, cfg.dtype)
    disk = [unit for unit, device in placement.items() if device == "disk"]
    if disk and offload_folder is None:
        offload_folder = tempfile.mkdtemp(prefix="gated_interp_offload_")
    if offload_folder is not None:
        Path(offload_folder).mkdir(parents=True, exist_ok=True)
    params = dict(model.named_parameters())
    by_unit: dict[str, list[str]] = {}
    for name in sorted(names):
        by_unit.setdefault(unit_of(name), []).append(name)
    # The tied embedding is the unembedding's source too (the dispatched model is untied).
    if "unembed" not in by_unit:
        by_unit["unembed"] = [n for n in by_unit["embed"]]
    read = iter(progress_names(sorted(names)))
    index: dict[str, Any] = {}
    final_norm: Tensor | None = None
    with torch.no_grad():
        for unit in placement:
            state = _unit_state(unit, by_unit.get(unit, []), params, get, convert, cfg, read, on_tensor)
            if unit == "ln_final":  # folded below into W_U, which comes next
                final_norm = state["ln_final.w"].clone()
                if fold_ln:
                    state["ln_final.w"] = identity_norm_weight(final_norm, cfg)
            if fold_ln and unit.startswith("blocks."):
                state.update(fold_block_norms_updates(state, cfg, int(unit.split(".")[1]), in_place=True))
            if unit == "unembed":
                state["unembed.b_U"] = torch.zeros(cfg.d_vocab, dtype=cfg.dtype)
                if fold_ln:
                    assert final_norm is not None  # the placement runs ln_final before unembed
                    updates = dict(fold_final_norm_updates({**state, "ln_final.w": final_norm}, cfg, in_place=True))
                    state["unembed.W_U"] = updates["unembed.W_U"]
                if center_unembed:
                    state.update(center_unembed_updates(state, in_place=True))
                del state["unembed.b_U"]  # a zero buffer (centring keeps it zero), set with the others below
            for name, value in state.items():
                if placement[unit] == "disk":
                    offload_weight(value.contiguous(), name, str(offload_folder), index)
                else:
                    set_module_tensor_to_device(model, name, *_place(placement, unit), value=value)
            del state
    for name, value in _buffers(model, cfg):
        unit = _unit_of_param(name)
        device = computes_on(placement, unit) if placement[unit] == "disk" else _place(placement, unit)[0]
        set_module_tensor_to_device(model, name, device, value=value)
    if index:
        save_offload_index(index, str(offload_folder))
    if fold_ln:
        model.cfg.normalization_type = "RMSPre"
    dispatch_model(
        model,
        device_map=placement,
        main_device=main_device(placement),
        offload_dir=str(offload_folder) if index else None,
        offload_index=index or None,
        force_hooks=True,  # one device too: the hooks are what brings offloaded weights in
    )
    model.cfg.device = main_device(placement)
    model.hf_device_map = placement  # transformers' attribute name for the map used
    return model.eval()


def _place(placement: dict[str, str | int], unit: str) -> tuple[str]:
    """The device a unit's tensors are stored on (disk units are written to the offload folder)."""
    device = placement[unit]
    return (f"cuda:{device}" if isinstance(device, int) else str(device),)


def _unit_of_param(name: str) -> str:
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == "blocks" else parts[0]


def _unit_state(
    unit: str,
    hf_names: list[str],
    params: dict[str, Tensor],
    get: Callable[[str], Tensor],
    convert: Convert,
    cfg: GatedQwen3Config,
    read: Iterator[str],
    on_tensor: Callable[[str, Tensor], None],
) -> dict[str, Tensor]:
    """The unit's parameters on the CPU, in `cfg.dtype`, from its checkpoint tensors."""
    state = {
        name: torch.empty(param.shape, dtype=param.dtype)
        for name, param in params.items()
        if _unit_of_param(name) == unit
    }
    for hf_name in hf_names:
        tensor = get(hf_name)
        if unit != "unembed" or "lm_head.weight" in hf_names:
            next(read, None)  # one step of the bar per checkpoint tensor
            on_tensor(hf_name, tensor)
        for our_name, expert, value in convert(hf_name, tensor):
            if unit == "unembed" and our_name == "embed.W_E":  # tied: the unembedding is W_E.T
                our_name, value = "unembed.W_U", value.T
            target = state[our_name] if expert is None else state[our_name][expert]
            target.copy_(value)
    return state


def _buffers(model: Any, cfg: GatedQwen3Config) -> Iterator[tuple[str, Tensor]]:
    """Every buffer's value: the rotary tables computed afresh, the zero biases of the released format."""
    from gated_interp.components import RotaryEmbedding

    rotary = RotaryEmbedding(cfg.rotary_dim, cfg.rope_theta, cfg.rope_scaling)
    for name, buffer in model.named_buffers():
        if name.startswith("rotary."):
            yield name, getattr(rotary, name.removeprefix("rotary."))
        elif name.rsplit(".", 1)[-1].lstrip("_").startswith("b_"):
            yield name, torch.zeros(buffer.shape, dtype=buffer.dtype)
        else:  # a new kind of buffer: say so rather than leave it on meta
            raise NotImplementedError(f"dispatching a model: no value known for buffer {name}")
