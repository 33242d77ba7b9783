"""Random weights in the released checkpoint format, for the benchmarks' models.

Every benchmark describes its model as a `GatedQwen3Config` (`GatedQwen3Config.tiny` with its own
sizes) and writes it here: `config.json` as `save_hf` writes it, and the weights of the test
reference's `random_released_checkpoint` (seeded, so that a benchmark always times the same model).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference import random_released_checkpoint  # noqa: E402

from gated_interp.config import GatedQwen3Config  # noqa: E402
from gated_interp.loading.hf_config import hf_config_from  # noqa: E402

_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16"}


def write_random_checkpoint(
    folder: Path, cfg: GatedQwen3Config, dtype: torch.dtype = torch.float32, seed: int = 0
) -> Path:
    """`folder` with config.json and model.safetensors: random weights for `cfg`, saved in `dtype`."""
    folder.mkdir(parents=True, exist_ok=True)
    config = hf_config_from(cfg, torch_dtype=_DTYPE_NAMES[dtype])
    state_dict = random_released_checkpoint(config, seed=seed, dtype=dtype)
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder
