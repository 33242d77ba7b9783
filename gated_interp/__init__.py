"""gated_interp: mechanistic interpretability of gated-attention transformers.

import gated_interp as gi
model = gi.load_hooked("gate_headwise", size="tiny")
logits, cache = model.run_with_cache("Sparse gating mechanism mitigates attention sink.")
cache["gate", 1]   # sigmoid gate scores, [batch, pos, head, 1]

The package imports lazily: `import gated_interp` (and `gated-interp --help`) does not import
torch; each name below is imported from its module on first use. New top-level exports go into
`_LAZY`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gated_interp._lazy import lazy_attributes

__version__ = "0.1.0"

# exported name -> module that defines it
_LAZY = {
    "CheckpointError": "gated_interp.loading.errors",
    "ReleaseNotAvailable": "gated_interp.loading.errors",
    "NonFiniteWeightsWarning": "gated_interp.loading.errors",
    "GatedActivationCache": "gated_interp.cache",
    "GatedQwen3Config": "gated_interp.config",
    "HookedGatedQwen3": "gated_interp.model",
    "VARIANTS": "gated_interp.loading.resolve",
    "HYBRID_VARIANTS": "gated_interp.loading.resolve",
    "load_hooked": "gated_interp.loading.load",
    "plan_device_map": "gated_interp.loading.device_map",
    "save_hf": "gated_interp.loading.save",
}
_SUBPACKAGES = frozenset(
    {
        "analysis",
        "cache",
        "cli",
        "components",
        "config",
        "loading",
        "model",
        "patching",
        "plotting",
        "train",
        "weight_processing",
    }
)

__all__ = [
    "HYBRID_VARIANTS",
    "VARIANTS",
    "CheckpointError",
    "GatedActivationCache",
    "GatedQwen3Config",
    "HookedGatedQwen3",
    "NonFiniteWeightsWarning",
    "ReleaseNotAvailable",
    "load_hooked",
    "plan_device_map",
    "save_hf",
]
assert set(__all__) == set(_LAZY)

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names come from __getattr__
    from gated_interp.cache import GatedActivationCache
    from gated_interp.config import GatedQwen3Config
    from gated_interp.loading.device_map import plan_device_map
    from gated_interp.loading.errors import CheckpointError, NonFiniteWeightsWarning, ReleaseNotAvailable
    from gated_interp.loading.load import load_hooked
    from gated_interp.loading.resolve import HYBRID_VARIANTS, VARIANTS
    from gated_interp.loading.save import save_hf
    from gated_interp.model import HookedGatedQwen3


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, _SUBPACKAGES)
