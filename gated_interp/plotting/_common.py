"""Small shared helpers for the plots: tensors to numpy, readable token labels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def to_numpy(values: Any) -> np.ndarray:
    """A tensor (any device or dtype), array or list as a float numpy array."""
    if isinstance(values, torch.Tensor):
        return values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=float)


def token_labels(str_tokens: Sequence[str]) -> list[str]:
    """Tokens with newlines and tabs made visible, so each tick label stays on one line."""
    return [t.replace("\n", "\\n").replace("\t", "\\t") for t in str_tokens]
