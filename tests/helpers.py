"""Helpers shared by the tests: tiny random checkpoints in the released format, weight edits with
known effects, comparisons, and the bundled models the package ships.

`conftest.py` keeps only fixtures and puts `tests/` on `sys.path`, so test files import these with
`from helpers import ...` (and the independent reference with `from reference import ...`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import jaxtyping
import torch
from safetensors.torch import save_file

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)

from reference import random_released_checkpoint, tiny_config  # noqa: E402

import gated_interp  # noqa: E402

# The tiny trained models shipped inside the package (not via the loader's own constants, so that a
# loader regression cannot hide them).
TINY_DIR = Path(gated_interp.__file__).resolve().parent / "checkpoints" / "tiny"
TINY_HYBRID_DIR = TINY_DIR.parent / "tiny_hybrid"

GATES = ("none", "headwise", "elementwise")


# ---- tiny random checkpoints -------------------------------------------------------------
def gate_overrides(gate: str) -> dict:
    """config.json keys selecting a gate kind ("none", "headwise", "elementwise")."""
    return {
        "headwise_attn_output_gate": gate == "headwise",
        "elementwise_attn_output_gate": gate == "elementwise",
    }


def write_checkpoint(
    folder: str | os.PathLike,
    config: dict,
    state_dict: dict[str, torch.Tensor],
    fmt: str = "safetensors",
    dtype: torch.dtype | None = None,
    n_shards: int = 3,
) -> Path:
    """Write `config` and `state_dict` as a checkpoint folder in the released HF format.

    fmt: "safetensors" (one model.safetensors), "sharded" (several model-0000i-of-0000n.safetensors
    plus model.safetensors.index.json) or "bin" (pytorch_model.bin). `dtype` casts every tensor.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: (v if dtype is None else v.to(dtype)).contiguous().clone() for k, v in state_dict.items()}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    if fmt == "safetensors":
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    elif fmt == "sharded":
        names = sorted(tensors)
        n = max(1, min(n_shards, len(names)))
        weight_map = {}
        for i in range(n):
            file = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            part = {name: tensors[name] for name in names[i::n]}
            save_file(part, str(folder / file), metadata={"format": "pt"})
            weight_map.update({name: file for name in part})
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())}}
        index["weight_map"] = weight_map
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    elif fmt == "bin":
        torch.save(tensors, folder / "pytorch_model.bin")
    else:
        raise ValueError(f"unknown fmt {fmt!r}")
    return folder


def make_tiny(
    folder: str | os.PathLike, gate: str = "none", seed: int = 0, fmt: str = "safetensors", **overrides
) -> tuple[gated_interp.HookedGatedQwen3, dict, dict[str, torch.Tensor]]:
    """A random tiny checkpoint written to `folder` and loaded: (model, config dict, HF state dict)."""
    config = tiny_config(**gate_overrides(gate), **overrides)
    sd = random_released_checkpoint(config, seed=seed)
    write_checkpoint(folder, config, sd, fmt=fmt)
    model = gated_interp.load_hooked(str(folder), device="cpu", progress=False)
    return model, config, sd


def make_tiny_with_tokenizer(folder: Path, tokenizer, gate: str = "none", seed: int = 0, **overrides):
    """Like `make_tiny`, with the tokenizer saved into the checkpoint folder (vocab = tokenizer's)."""
    from gated_interp.train.tokenizer import save_tokenizer

    overrides.setdefault("vocab_size", len(tokenizer))
    config = tiny_config(**gate_overrides(gate), **overrides)
    sd = random_released_checkpoint(config, seed=seed)
    write_checkpoint(folder, config, sd)
    save_tokenizer(tokenizer, folder)
    model = gated_interp.load_hooked(str(folder), device="cpu", progress=False)
    assert model.tokenizer is not None
    return model, config, sd


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
    return {**config, **gate_overrides("none")}, out


# ---- weight edits with known effects -----------------------------------------------------
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


def random_tokens(model, batch: int = 2, pos: int = 6, seed: int = 0) -> torch.Tensor:
    """Seeded random token ids in the model's vocabulary, `[batch, pos]`."""
    return torch.randint(0, model.cfg.d_vocab, (batch, pos), generator=torch.Generator().manual_seed(seed))


# ---- comparisons -------------------------------------------------------------------------
def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute elementwise difference (in float32) of two tensors of the same shape."""
    assert a.shape == b.shape, (a.shape, b.shape)
    if not a.numel():
        return 0.0
    a, b = a.float(), b.float()
    # equal infinities (masked attention scores) count as equal, not as nan
    return torch.where(a == b, 0.0, (a - b).abs()).max().item()


@contextlib.contextmanager
def without_shape_checks() -> Iterator[None]:
    """Calls made inside skip the runtime shape checker that pytest wraps around the package
    (`--jaxtyping-packages`): a user without it passes bad input straight to our own checks, and
    tests of their error messages need to see those, not the checker's."""
    before = jaxtyping.config.jaxtyping_disable
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", before)


# ---- the bundled tiny models -------------------------------------------------------------
def require_bundled() -> None:
    """Fail (never skip) when the tiny models the package ships are missing: that is a packaging
    regression, not an optional extra."""
    missing = [v for v in gated_interp.VARIANTS if not (TINY_DIR / v / "config.json").is_file()]
    missing += [f for f in ("metrics.json", "heldout_tokens.safetensors") if not (TINY_DIR / f).is_file()]
    assert not missing, f"bundled tiny models missing from {TINY_DIR}: {missing}"


def require_bundled_hybrid() -> None:
    """Fail (never skip) when the bundled Qwen3.5-layout pair or its held-out windows are missing."""
    missing = [v for v in gated_interp.HYBRID_VARIANTS if not (TINY_HYBRID_DIR / v / "config.json").is_file()]
    missing += [f for f in ("heldout_tokens.safetensors",) if not (TINY_HYBRID_DIR / f).is_file()]
    assert not missing, f"bundled tiny hybrid models missing from {TINY_HYBRID_DIR}: {missing}"


# ---- TransformerLens-parity models -------------------------------------------------------
PARITY_BUNDLED = ("baseline", "gate_headwise", "gate_elementwise")
# Random checkpoints with biases on q, k, v, o (and the gate): GQA 4 query / 2 kv heads, and one
# plain multi-head model (TransformerLens' K/V path patching refuses GQA).
RANDOM_WITH_BIASES = {
    "random_headwise": dict(gate="headwise"),
    "random_elementwise": dict(gate="elementwise"),
    "random_mha_elementwise": dict(gate="elementwise", num_key_value_heads=4),
}


def parity_folders(tmp_path_factory, seed: int = 5) -> dict:
    """Write each RANDOM_WITH_BIASES checkpoint once: {kind: folder}."""
    folders = {}
    for kind, spec in RANDOM_WITH_BIASES.items():
        folder = tmp_path_factory.mktemp(kind)
        make_tiny(folder, seed=seed, qkv_bias=True, **spec)
        folders[kind] = folder
    return folders


def parity_model(kind: str, folders: dict, **load_kwargs):
    """A bundled tiny model (`kind` in PARITY_BUNDLED), or a random model with biases from `folders`."""
    load_kwargs.setdefault("progress", False)
    if kind in PARITY_BUNDLED:
        return gated_interp.load_hooked(kind, size="tiny", device="cpu", **load_kwargs)
    return gated_interp.load_hooked(str(folders[kind]), device="cpu", **load_kwargs)
