"""Per-head weights are laid out for the forward's one matmul (`components.per_head`): it reads them
in place (no copy per call) after loading, folding and casting, and a weight in any other layout
gives the same numbers."""

from __future__ import annotations

import pytest
import torch
from hybrid_models import hybrid_checkpoint
from torch import nn

import gated_interp as gi
from gated_interp.components.per_head import as_matrix

PER_HEAD = {"attn": ("W_Q", "_W_K", "_W_V", "W_G"), "linear_attn": ("W_Q", "W_K", "W_V", "W_Z")}


def per_head_weights(model: gi.HookedGatedQwen3) -> dict[str, nn.Parameter]:
    found = {}
    for layer, block in enumerate(model.blocks):
        for part, names in PER_HEAD.items():
            module = getattr(block, part, None)
            for name in names:
                if module is not None and name in module._parameters:
                    found[f"blocks.{layer}.{part}.{name}"] = module._parameters[name]
    return found


@pytest.fixture(scope="module")
def hybrid_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen3_5_text")
    hybrid_checkpoint("qwen3_5_text", folder, seed=3)
    return folder


def _models(hybrid_folder):
    return {
        "gate_headwise": gi.load_hooked("gate_headwise", size="tiny", progress=False),
        "qwen3_5_text": gi.load_hooked(str(hybrid_folder), progress=False),
    }


def test_the_matmul_reads_per_head_weights_in_place(hybrid_folder):
    for label, model in _models(hybrid_folder).items():
        for dtype in (torch.float32, torch.float64):  # loaded and folded, then cast
            model.to(dtype)
            weights = per_head_weights(model)
            assert any(".attn.W_G" in n for n in weights)
            assert any(".linear_attn." in n for n in weights) == (label == "qwen3_5_text")
            for name, W in weights.items():
                matrix = as_matrix(W)
                assert matrix.data_ptr() == W.data_ptr() and matrix.is_contiguous(), f"{label} {name} is copied"


def test_a_weight_in_another_layout_gives_the_same_numbers(hybrid_folder):
    for label, model in _models(hybrid_folder).items():
        tokens = torch.randint(0, model.cfg.d_vocab, (2, 7), generator=torch.Generator().manual_seed(0))
        logits, cache = model.run_with_cache(tokens)
        for W in per_head_weights(model).values():  # as a user might assign them: plain contiguous
            W.data = W.data.contiguous()
            if W.shape[-1] > 1:  # a headwise gate's [head, d_model, 1] is read in place either way
                assert as_matrix(W).data_ptr() != W.data_ptr()  # the copying path is what runs
        again, cache_again = model.run_with_cache(tokens)
        # Equal up to float32 rounding: the same matmul, though BLAS may sum a transposed operand
        # (a headwise gate's column) in another order.
        for name in cache:
            torch.testing.assert_close(cache_again[name], cache[name], rtol=1e-5, atol=1e-5, msg=f"{label} {name}")
        torch.testing.assert_close(again, logits, rtol=1e-5, atol=1e-5)
