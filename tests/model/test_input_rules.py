"""The rules issue 24 left undecided, one test each: tokens past the context, an empty batch, a
misspelled hook name among valid ones, and an RMSNorm epsilon no model has. Each either runs
with a warning that says what the numbers are, or is refused with an error naming the input."""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import make_tiny, random_tokens

from gated_interp import GatedQwen3Config

N_CTX = 8


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    model, _, _ = make_tiny(
        tmp_path_factory.mktemp("rules"), gate="headwise", seed=3, num_hidden_layers=2, max_position_embeddings=N_CTX
    )
    assert model.cfg.n_ctx == N_CTX
    return model


def _past_context_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if "run past the model's context" in str(w.message)]


def test_tokens_longer_than_n_ctx_run_whole_with_a_warning(model):
    short, long = random_tokens(model, 1, N_CTX), random_tokens(model, 1, N_CTX + 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model(short)
    assert not _past_context_warnings(caught)
    with pytest.warns(UserWarning, match=rf"run past the model's context \(n_ctx={N_CTX} tokens\)") as record:
        logits = model(long)
    assert logits.shape[1] == N_CTX + 3  # run whole, not cut
    assert record[0].filename == __file__  # reported at the caller's line


def test_generate_past_n_ctx_warns_once(model):
    prompt = random_tokens(model, 1, N_CTX - 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.generate(prompt, max_new_tokens=2, do_sample=False, verbose=False)
    assert not _past_context_warnings(caught)
    for use_cache in (True, False):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")  # Python's default: one warning per message and line
            out = model.generate(prompt, max_new_tokens=5, do_sample=False, verbose=False, use_past_kv_cache=use_cache)
        assert out.shape[1] == N_CTX + 3
        assert len(_past_context_warnings(caught)) == 1, use_cache


def test_a_batch_of_no_sequences_is_refused(model):
    empty = torch.zeros(0, 5, dtype=torch.long)
    for call in (
        lambda: model(empty, return_type="loss"),
        lambda: model(empty),
        lambda: model.run_with_cache(empty),
        lambda: model([]),
    ):
        with pytest.raises(ValueError, match="empty batch: give at least one sequence"):
            call()


def test_a_misspelled_hook_name_among_valid_ones_is_refused(model):
    tokens = random_tokens(model, 1, 4)
    with pytest.raises(KeyError, match="blocks.0.attn.hook_gaet"):
        model.run_with_cache(tokens, names_filter=["blocks.0.attn.hook_pattern", "blocks.0.attn.hook_gaet"])
    with pytest.raises(KeyError, match="hook_patern"):
        model.run_with_cache(tokens, names_filter="blocks.1.attn.hook_patern")
    # Valid names, in any spelling gated_interp.hooks resolves, still cache exactly those hooks.
    _, cache = model.run_with_cache(tokens, names_filter=["blocks.0.attn.hook_pattern", "blocks.1.hook_gate"])
    assert sorted(cache.keys()) == ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_gate"]


@pytest.mark.parametrize("eps", [1e30, 0.5, float("inf"), 0.0])
def test_an_rms_norm_eps_no_model_has_is_refused(eps):
    with pytest.raises(ValueError, match=r"rms_norm_eps must be (at most 0\.01|a finite number > 0)"):
        GatedQwen3Config.tiny(rms_norm_eps=eps)
    assert GatedQwen3Config.tiny(rms_norm_eps=1e-5).rms_norm_eps == 1e-5
