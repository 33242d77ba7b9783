"""What a full `run_with_cache` of the measurement hooks would hold: the memory streaming avoids."""

from __future__ import annotations

from typing import Any

import torch


def full_cache_bytes(model: Any, batch: int, pos: int) -> int:
    """Bytes of the attention patterns, residual streams and gates that a `run_with_cache` of the
    measurement hooks holds for one `[batch, pos]` batch (in the model's dtype), plus a float32
    copy of one layer's pattern."""
    cfg = model.cfg
    item = torch.finfo(cfg.dtype).bits // 8
    pattern = batch * cfg.n_heads * pos * pos
    resid = batch * pos * cfg.d_model
    gates = batch * pos * cfg.n_heads * (cfg.gate_width if cfg.is_gated else 0)
    return cfg.n_layers * (pattern + resid + gates) * item + pattern * 4
