"""Where each part of a model goes when it is bigger than one device: accelerate's device map.

`load_hooked(..., device_map=...)` and `plan_device_map` take `device_map` with the meanings
transformers' `from_pretrained` gives it: "auto", "balanced", "balanced_low_0", "sequential"
(accelerate's `infer_auto_device_map`, filling GPUs first, then the CPU, then the disk, within
`max_memory`), one device ("cpu", "cuda:1", 0, or "disk": everything offloaded to disk), or a dict
from module name to device. A dict may name the model whole (""), `blocks`, or the units below;
whatever it says is resolved to one device per unit: `embed`, `rotary`, `blocks.<l>`, `ln_final`,
`unembed`. A block is never split across devices (`no_split_module_classes`), so a dict naming a
part of a block is refused.

Nothing here reads a weight: sizes come from a model built on the meta device.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Union

import torch

from gated_interp.config import GatedQwen3Config

DeviceMapSpec = Union[str, int, torch.device, dict[str, Union[str, int, torch.device]]]
STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
# The block class accelerate must keep whole on one device.
NO_SPLIT = ["TransformerBlock"]
_OFFLOADED = ("cpu", "disk")


def units(cfg: GatedQwen3Config) -> list[str]:
    """The model's top-level parts, each placed whole, in the order the forward pass runs them."""
    return ["embed", "rotary", *(f"blocks.{layer}" for layer in range(cfg.n_layers)), "ln_final", "unembed"]


def empty_model(cfg: GatedQwen3Config, tokenizer: Any = None) -> Any:
    """`HookedGatedQwen3(cfg)` on the meta device (no memory, no weights), untied: a device map
    may put the embedding and the unembedding on different devices (or the embedding on disk),
    so the unembedding holds its own `W_U`. Buffers are left on meta (see `dispatch`)."""
    from accelerate import init_empty_weights

    from gated_interp.model import HookedGatedQwen3

    meta_cfg = GatedQwen3Config(**{**cfg.to_dict(), "device": "meta"})
    with init_empty_weights(include_buffers=True):
        model = HookedGatedQwen3(meta_cfg, tokenizer=tokenizer)
        model.unembed.untie()
    model.cfg.tie_word_embeddings = False
    return model


def _device(value: Any, where: str) -> str | int:
    """A device map value as accelerate writes them: an int for a GPU index, else a string."""
    if isinstance(value, bool):
        raise ValueError(f"device_map{where}: {value!r} is not a device")
    if isinstance(value, int):
        return value
    if isinstance(value, torch.device):
        value = str(value)
    if isinstance(value, str):
        if value == "disk":
            return value
        try:
            torch.device(value)
        except RuntimeError:
            raise ValueError(
                f"device_map{where}: {value!r} is not a device: use 'cpu', 'cuda', 'cuda:1', a GPU index, or 'disk'"
            ) from None
        return value
    raise ValueError(f"device_map{where}: {value!r} is not a device")


def resolve_units(raw: dict[str, Any], cfg: GatedQwen3Config) -> dict[str, str | int]:
    """One device per unit (see `units`) from a map whose keys may be coarser ("", "blocks")."""
    wanted = units(cfg)
    known = {"", "blocks", *wanted}
    # accelerate's maps also name the model's top-level hook points, which hold no tensors.
    raw = {key: device for key, device in raw.items() if not key.startswith("hook_")}
    for key in raw:
        if key not in known:
            inside = next((u for u in wanted if key.startswith(u + ".")), None)
            if inside is not None:
                raise ValueError(
                    f"device_map names {key!r}, a part of {inside!r}: a block is placed whole on one device. "
                    f"Map {inside!r} instead"
                )
            raise ValueError(
                f"device_map names {key!r}, which is not a part of this model; use '' (all), 'embed', 'rotary', "
                f"'blocks' or 'blocks.<layer>' (0 to {cfg.n_layers - 1}), 'ln_final', 'unembed'"
            )
    resolved: dict[str, str | int] = {}
    missing = []
    for unit in wanted:
        # The longest key that is this unit or holds it.
        holders = [key for key in raw if key == "" or unit == key or unit.startswith(key + ".")]
        if not holders:
            missing.append(unit)
            continue
        key = max(holders, key=len)
        resolved[unit] = _device(raw[key], f"[{key!r}]")
    if missing:
        raise ValueError(f"device_map does not place {missing[:6]}: every part of the model needs a device")
    # The rotary tables are buffers: they go where the first block computes (they are a few KB).
    if resolved["rotary"] == "disk":
        resolved["rotary"] = "cpu"
    return resolved


def infer_device_map(
    model: Any, device_map: DeviceMapSpec, max_memory: dict[Any, Any] | None, dtype: torch.dtype
) -> dict[str, str | int]:
    """`device_map` (see the module docstring) → one device per unit, for `model` on meta."""
    from accelerate.utils import get_balanced_memory, infer_auto_device_map

    if isinstance(device_map, str) and device_map in STRATEGIES:
        if device_map != "sequential":  # transformers' rule: "auto" and "balanced" even out the GPUs
            max_memory = get_balanced_memory(
                model, max_memory, no_split_module_classes=NO_SPLIT, dtype=dtype,
                low_zero=device_map == "balanced_low_0",
            )  # fmt: skip
        raw = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=NO_SPLIT, dtype=dtype)
    elif isinstance(device_map, dict):
        raw = dict(device_map)
    elif isinstance(device_map, (str, int, torch.device)):
        raw = {"": device_map}
    else:
        raise ValueError(
            f"device_map must be one of {STRATEGIES}, a device, 'disk' or a dict from module name to device; "
            f"got {device_map!r}"
        )
    return resolve_units(raw, model.cfg)


def main_device(device_map: dict[str, str | int]) -> str:
    """Where the forward pass computes what is offloaded: the first device that is not the CPU or
    the disk (accelerate's rule), else the CPU."""
    on_device = [device for device in device_map.values() if device not in _OFFLOADED]
    return _torch_name(on_device[0]) if on_device else "cpu"


def _torch_name(device: str | int) -> str:
    return f"cuda:{device}" if isinstance(device, int) else str(torch.device(device))


def computes_on(device_map: dict[str, str | int], unit: str) -> str:
    """The device `unit`'s forward runs on: its own, or the main device if it is offloaded."""
    device = device_map[unit]
    return main_device(device_map) if device in _OFFLOADED else _torch_name(device)


@dataclass
class DevicePlan:
    """A device map and the bytes of weights it puts on each device (before loading anything)."""

    model_name: str
    dtype: torch.dtype
    device_map: dict[str, str | int]
    bytes_per_device: dict[str, int]
    total_bytes: int

    def __str__(self) -> str:
        lines = [f"{self.model_name}: {self.total_bytes / 2**30:.2f} GiB of weights in {self.dtype}"]
        for device, size in self.bytes_per_device.items():
            where = ", ".join(_ranges([u for u, d in self.device_map.items() if str(d) == device]))
            lines.append(f"  {device:>8}: {size / 2**30:8.2f} GiB  {where}")
        return "\n".join(lines)


def _ranges(names: list[str]) -> list[str]:
    """["embed", "blocks.0", "blocks.1", "blocks.2"] → ["embed", "blocks 0-2"]."""
    out: list[str] = []
    layers: list[int] = []

    def flush() -> None:
        if layers:
            out.append(f"blocks {layers[0]}" + (f"-{layers[-1]}" if len(layers) > 1 else ""))
            layers.clear()

    for name in names:
        match = re.fullmatch(r"blocks\.(\d+)", name)
        if match and (not layers or int(match[1]) == layers[-1] + 1):
            layers.append(int(match[1]))
            continue
        flush()
        if match:
            layers.append(int(match[1]))
        else:
            out.append(name)
    flush()
    return out


def plan_for_config(
    cfg: GatedQwen3Config,
    device_map: DeviceMapSpec = "auto",
    max_memory: dict[Any, Any] | None = None,
    dtype: torch.dtype = torch.float32,
) -> DevicePlan:
    """The plan for `cfg` loaded in `dtype`: built on meta, no weights read."""
    from accelerate.utils import compute_module_sizes

    cfg = GatedQwen3Config(**{**cfg.to_dict(), "dtype": dtype})
    model = empty_model(cfg)
    resolved = infer_device_map(model, device_map, max_memory, dtype)
    sizes = compute_module_sizes(model, dtype=dtype)
    per_device: dict[str, int] = {}
    for unit, device in resolved.items():
        per_device[str(device)] = per_device.get(str(device), 0) + sizes.get(unit, 0)
    return DevicePlan(cfg.model_name or "model", dtype, resolved, per_device, sizes[""])


def plan_device_map(
    name_or_path: str | Any,
    *,
    device_map: DeviceMapSpec = "auto",
    max_memory: dict[Any, Any] | None = None,
    dtype: torch.dtype = torch.float32,
    size: str = "1B",
) -> DevicePlan:
    """The device map `load_hooked(name_or_path, device_map=..., max_memory=..., dtype=...)` would
    use, and the weights' bytes per device, from config.json alone: a folder (weights not needed),
    a hub id (only its config.json is fetched) or a variant name. `print(plan)` shows it."""
    import os
    from pathlib import Path

    from gated_interp.loading import hybrid
    from gated_interp.loading.hf_config import config_from_hf, read_config_json

    path = Path(os.fspath(name_or_path)).expanduser()
    if path.is_dir():
        folder = path
    elif isinstance(name_or_path, str) and name_or_path.count("/") == 1 and not path.exists():
        folder = _hub_config_only(name_or_path)
    else:
        from gated_interp.loading.resolve import resolve_checkpoint

        folder = resolve_checkpoint(name_or_path, size)
    hf = read_config_json(folder)
    build = hybrid.config_from_hybrid_hf if hf.get("model_type") in hybrid.FAMILIES else config_from_hf
    # The dispatched model is untied (see `empty_model`), so the default does not change the sizes.
    cfg = build(hf, tie_word_embeddings_default=False, dtype=dtype, device="meta", model_name=folder.name)
    return plan_for_config(cfg, device_map, max_memory, dtype)


def _hub_config_only(repo: str) -> Any:
    """The folder holding `repo`'s config.json, fetched alone from the hub (or its cache)."""
    from pathlib import Path

    from huggingface_hub import hf_hub_download

    from gated_interp.loading.errors import CheckpointError

    try:
        return Path(hf_hub_download(repo, "config.json")).parent
    except Exception as error:  # offline, no such repository, gated: one message naming the repository
        raise CheckpointError(
            f"cannot fetch config.json of {repo} from the hub ({type(error).__name__}: {error}); "
            f"download it (hf download {repo} config.json --local-dir DIR) and plan from DIR"
        ) from None
