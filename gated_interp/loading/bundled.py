"""The tiny trained models shipped inside the package, and the held-out text they were measured on.

Two bundles, each with its own model card (`README.md`):
`gated_interp/checkpoints/tiny/` holds the paper's three variants (baseline, gate_headwise,
gate_elementwise) in the released format; `gated_interp/checkpoints/tiny_hybrid/` holds the
Qwen3.5-layout pair (hybrid_gated, hybrid_ungated) as `qwen3_5_text` folders. Each bundle also has
`heldout_tokens.safetensors` (the held-out windows every figure of its card was computed on) and
`metrics.json` (those figures), so that anyone can re-measure them offline.
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
from gated_interp.loading.resolve import BUNDLED_DIR, BUNDLES

TINY_DIR = BUNDLED_DIR / "tiny"
TINY_HYBRID_DIR = BUNDLED_DIR / "tiny_hybrid"
HELDOUT_FILE = "heldout_tokens.safetensors"
METRICS_FILE = "metrics.json"


def bundle_dir(bundle: str = "tiny") -> Path:
    """The folder of a bundle: "tiny" (the paper's three variants) or "tiny_hybrid" (the Qwen3.5-layout pair)."""
    if bundle not in BUNDLES:
        raise ValueError(f"bundle must be one of {BUNDLES}, got {bundle!r}")
    return BUNDLED_DIR / bundle


def _bundled_file(name: str, bundle: str) -> Path:
    path = bundle_dir(bundle) / name
    if not path.is_file():
        raise CheckpointError(
            f"{path} is missing: the bundled {bundle} models are not installed; reinstall gated-interp or "
            "rebuild them from a clone with `python -m gated_interp.train` and `python -m maintainer.model_card`"
        )
    return path


def heldout_tokens(bundle: str = "tiny") -> Int[Tensor, "window pos"]:
    """Held-out windows (each led by the document token) from the validation books, as the
    `bundle`'s card measured them (both bundles share tokenizer and books, so the same windows)."""
    return load_file(str(_bundled_file(HELDOUT_FILE, bundle)))["tokens"].to(torch.long)


def bundled_metrics(bundle: str = "tiny") -> dict[str, Any]:
    """What the `bundle`'s model card reports, per variant (held-out loss, first-token attention, ...).
    In "tiny_hybrid", per-layer figures that do not apply to a layer (first-token attention of a
    linear-attention layer) are None."""
    return json.loads(_bundled_file(METRICS_FILE, bundle).read_text())
