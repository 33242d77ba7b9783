"""The tiny trained variants shipped inside the package, and the held-out text they were measured on.

`gated_interp/checkpoints/tiny/` holds one folder per variant in the released format, plus
`heldout_tokens.safetensors` (the held-out windows every figure of the model card was computed on)
and `metrics.json` (those figures), so that anyone can re-measure them offline.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from safetensors.torch import load_file
from torch import Tensor

from gated_interp.loading.errors import CheckpointError
from gated_interp.loading.resolve import BUNDLED_DIR

TINY_DIR = BUNDLED_DIR / "tiny"
HELDOUT_FILE = "heldout_tokens.safetensors"
METRICS_FILE = "metrics.json"


def _bundled_file(name: str) -> Path:
    path = TINY_DIR / name
    if not path.is_file():
        raise CheckpointError(
            f"{path} is missing: the bundled tiny models are not installed; reinstall gated-interp or "
            "rebuild them from a clone with `python -m gated_interp.train` and `python -m maintainer.model_card`"
        )
    return path


def heldout_tokens() -> Int[Tensor, "window pos"]:
    """Held-out windows (each led by the document token) from the validation books."""
    return load_file(str(_bundled_file(HELDOUT_FILE)))["tokens"].to(torch.long)


def bundled_metrics() -> dict[str, Any]:
    """What the model card reports, per variant (held-out loss, first-token attention, ...)."""
    return json.loads(_bundled_file(METRICS_FILE).read_text())
