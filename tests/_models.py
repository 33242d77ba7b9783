"""Tiny random models for the analysis, intervention and plotting tests.

Kept apart from conftest.py (owned by the model tests) so these tests depend only on
`tests/reference.py` and the public loader.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from reference import random_released_checkpoint, tiny_config  # noqa: E402

import gated_interp  # noqa: E402


def gate_keys(gate: str) -> dict:
    return {"headwise_attn_output_gate": gate == "headwise", "elementwise_attn_output_gate": gate == "elementwise"}


def build(folder: Path, gate: str = "none", seed: int = 0, **overrides):
    """Write a random released-format checkpoint to `folder` and load it: (model, config, state dict)."""
    config = tiny_config(**gate_keys(gate), **overrides)
    state = random_released_checkpoint(config, seed=seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    model = gated_interp.load_hooked(str(folder), device="cpu", progress=False)
    return model, config, state


def ungated_state(config: dict, state: dict) -> tuple[dict, dict]:
    """The same weights with the gate rows dropped from q_proj (per key-value group, the released
    layout): the config and state dict of the model that an always-open gate computes."""
    h, kv, hd = config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]
    n_rep = h // kv
    width = hd if config["elementwise_attn_output_gate"] else 1
    out = dict(state)
    for key, value in state.items():
        if key.endswith("q_proj.weight") or key.endswith("q_proj.bias"):
            grouped = value.reshape(kv, n_rep * (hd + width), *value.shape[1:])
            out[key] = grouped[:, : n_rep * hd].reshape(h * hd, *value.shape[1:])
    return {**config, **gate_keys("none")}, out


def zero_queries(model) -> None:
    """W_Q = 0 (no q bias): every attention score is 0, so attention is uniform over visible keys."""
    with torch.no_grad():
        for block in model.blocks:
            block.attn.W_Q.zero_()
            if block.attn.b_Q is not None:
                block.attn.b_Q.zero_()


def constant_gates(model, score: float) -> None:
    """W_G = 0 and b_G = logit(score): every gate score equals `score` (needs qkv_bias=True)."""
    with torch.no_grad():
        for block in model.blocks:
            block.attn.W_G.zero_()
            block.attn.b_G.fill_(math.log(score / (1 - score)))


def random_tokens(model, batch: int, pos: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, model.cfg.d_vocab, (batch, pos), generator=torch.Generator().manual_seed(seed))


# ---- TransformerLens-parity models ---------------------------------------------------------------
BUNDLED = ("baseline", "gate_headwise", "gate_elementwise")
# Random checkpoints with biases on q, k, v, o (and the gate): GQA 4 query / 2 kv heads, and one
# plain multi-head model (TransformerLens' K/V path patching refuses GQA).
RANDOM_WITH_BIASES = {
    "random_headwise": dict(gate="headwise"),
    "random_elementwise": dict(gate="elementwise"),
    "random_mha_elementwise": dict(gate="elementwise", num_key_value_heads=4),
}


def parity_model(kind: str, folders: dict, **load_kwargs):
    """A bundled tiny model (`kind` in BUNDLED) or a random model with biases (a key of
    RANDOM_WITH_BIASES, written once into `folders[kind]` by `parity_folders`)."""
    load_kwargs.setdefault("progress", False)
    if kind in BUNDLED:
        return gated_interp.load_hooked(kind, size="tiny", device="cpu", **load_kwargs)
    return gated_interp.load_hooked(str(folders[kind]), device="cpu", **load_kwargs)


def parity_folders(tmp_path_factory, seed: int = 5) -> dict:
    folders = {}
    for kind, spec in RANDOM_WITH_BIASES.items():
        spec = dict(spec)
        folder = tmp_path_factory.mktemp(kind)
        build(folder, seed=seed, qkv_bias=True, **spec)
        folders[kind] = folder
    return folders
