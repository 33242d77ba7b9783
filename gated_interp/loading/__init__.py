"""Reading and writing checkpoints in the authors' released Hugging Face format.

config.json → `hf_config`; q_proj's per-group query/gate layout → `qproj_layout`; tensor files →
`weight_files`; HF names ↔ our parameters → `state_dict`; names and hub → `resolve`;
putting it together → `load` and `save`; what a checkpoint is, without building it → `inspect`.

Imports lazily (as the package does), so that the command line's `--help` needs no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gated_interp._lazy import lazy_attributes

_LAZY = {
    "CheckpointError": "gated_interp.loading.errors",
    "ReleaseNotAvailable": "gated_interp.loading.errors",
    "NonFiniteWeightsWarning": "gated_interp.loading.errors",
    "load_hooked": "gated_interp.loading.load",
    "save_hf": "gated_interp.loading.save",
    "describe_checkpoint": "gated_interp.loading.inspect",
    "plan_device_map": "gated_interp.loading.device_map",
    "DevicePlan": "gated_interp.loading.device_map",
}
_SUBMODULES = frozenset(
    {
        "bundled",
        "device_map",
        "dispatch",
        "errors",
        "hf_config",
        "inspect",
        "load",
        "qproj_layout",
        "resolve",
        "save",
        "state_dict",
        "weight_files",
    }
)
__all__ = [
    "CheckpointError",
    "DevicePlan",
    "NonFiniteWeightsWarning",
    "ReleaseNotAvailable",
    "bundled",
    "describe_checkpoint",
    "load_hooked",
    "plan_device_map",
    "save_hf",
]

if TYPE_CHECKING:
    from gated_interp.loading import bundled
    from gated_interp.loading.device_map import DevicePlan, plan_device_map
    from gated_interp.loading.errors import CheckpointError, NonFiniteWeightsWarning, ReleaseNotAvailable
    from gated_interp.loading.inspect import describe_checkpoint
    from gated_interp.loading.load import load_hooked
    from gated_interp.loading.save import save_hf


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, _SUBMODULES)
