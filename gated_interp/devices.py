"""Models dispatched across devices by accelerate (`load_hooked(..., device_map=...)`).

accelerate's hooks move each block's inputs to the device it computes on and bring offloaded
weights in for its forward pass only, so outside a forward pass an offloaded parameter is an
empty tensor on the meta device. Code that reads weights or allocates per-layer state outside
the forward pass asks here: where a module computes, and each parameter's value wherever it is kept.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn


def is_dispatched(model: Any) -> bool:
    """Whether `model` was loaded with a device map (it then carries transformers' `hf_device_map`)."""
    return getattr(model, "hf_device_map", None) is not None


def execution_device(module: nn.Module, default: str | torch.device) -> torch.device:
    """The device `module`'s forward pass computes on: its accelerate hook's, else `default`."""
    device = getattr(getattr(module, "_hf_hook", None), "execution_device", None)
    if device is None:
        return torch.device(default)
    return torch.device(f"cuda:{device}" if isinstance(device, int) else device)


def named_parameter_values(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """`(name, value)` of every parameter, detached. On a dispatched model the offloaded ones are
    read back to the CPU (from the CPU copy or the disk) one unit at a time, so that only the unit
    being read is brought in beside whatever the caller keeps."""
    if not is_dispatched(model):
        yield from ((name, param.detach()) for name, param in model.named_parameters())
        return
    from accelerate.utils import align_module_device, has_offloaded_params

    # accelerate hooks each submodule that holds parameters of its own: read them module by module.
    for unit in model.hf_device_map:
        values = []
        for name, module in model.get_submodule(unit).named_modules(prefix=unit):
            with align_module_device(module, "cpu" if has_offloaded_params(module) else None):
                values += [(f"{name}.{p}", param.detach()) for p, param in module.named_parameters(recurse=False)]
        yield from values


@contextmanager
def onloaded(module: nn.Module) -> Iterator[nn.Module]:
    """Inside, `module`'s own parameters hold their values on the device it computes on, also when
    a device map offloaded them (they are meta outside a forward pass); a no-op otherwise. For
    code that reads a weight directly, e.g. `with onloaded(block.attn): W_O = block.attn.W_O[heads]`
    (keep what you need as a new tensor: the parameter is released on exit)."""
    try:
        from accelerate.utils import align_module_device, has_offloaded_params
    except ImportError:  # accelerate absent: nothing can be offloaded
        yield module
        return
    if not has_offloaded_params(module):
        yield module
        return
    with align_module_device(module):
        yield module
