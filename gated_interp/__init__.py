"""gated_interp: mechanistic interpretability of gated-attention transformers.

import gated_interp as gi
model = gi.load_hooked("gate_headwise", size="tiny")
logits, cache = model.run_with_cache("Sparse gating mechanism mitigates attention sink.")
cache["gate", 1]   # sigmoid gate scores, [batch, pos, head, 1]
"""

from gated_interp.cache import GatedActivationCache
from gated_interp.config import GatedQwen3Config
from gated_interp.loading import CheckpointError, load_hooked, save_hf
from gated_interp.loading.resolve import VARIANTS
from gated_interp.model import HookedGatedQwen3

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "GatedActivationCache",
    "GatedQwen3Config",
    "HookedGatedQwen3",
    "VARIANTS",
    "load_hooked",
    "save_hf",
]
