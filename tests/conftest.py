"""Shared helpers for the model tests: writing checkpoints in the released format, tiny models.

`tests/` is put on `sys.path` so that test files can `from reference import ...` and
`from conftest import ...`.
"""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)

from reference import random_released_checkpoint, tiny_config  # noqa: E402

import gated_interp  # noqa: E402

# The models here are tiny: one thread is fastest, and it avoids OpenMP threads spinning against
# other jobs on a small shared machine (2 threads under load made a 9-token forward take 0.4 s).
torch.set_num_threads(1)

GATES = ("none", "headwise", "elementwise")


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


@pytest.fixture(params=GATES)
def gate(request) -> str:
    return request.param


@pytest.fixture
def tiny_model(tmp_path, gate):
    """(model, config, state_dict) of a loaded tiny model, once per gate kind."""
    return make_tiny(tmp_path / f"tiny_{gate}", gate=gate, seed=11)


_WORDS = (
    "the a little girl boy dog cat went to garden house and saw bird tree said happy sad ran "
    "jumped over under big small queen king fairy wizard forest river stone golden silver"
).split()


@pytest.fixture(scope="session")
def bpe_tokenizer(tmp_path_factory):
    """A byte-level BPE tokenizer (vocab 300, BOS = EOS = <|doc|> id 0, PAD id 1) trained in ~0.1 s."""
    from gated_interp.train.tokenizer import train_bpe_tokenizer

    rng = random.Random(0)
    lines = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 12))) + "." for _ in range(300)]
    corpus = tmp_path_factory.mktemp("corpus") / "train.txt"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return train_bpe_tokenizer(corpus, vocab_size=300)


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
