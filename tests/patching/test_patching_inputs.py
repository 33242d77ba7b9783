"""Patching sweeps on the inputs every other entry point takes: strings, left padding without an
explicit mask (`cfg.default_padding_side="left"`), and half-precision models."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import transformer_lens.patching as tl_patching
from helpers import make_tiny, make_tiny_with_tokenizer

from gated_interp.patching import logit_diff, patch_heads, patch_resid

N_PROMPTS, N_POS = 3, 7
PAD = 1  # the bpe_tokenizer fixture's pad id


@pytest.fixture(scope="module")
def left_padded(tmp_path_factory, bpe_tokenizer):
    """(model with cfg.default_padding_side="left", clean, corrupted, metric): rows 0 and 2 of both
    batches start with pad tokens and no mask is passed anywhere."""
    model, config, _ = make_tiny_with_tokenizer(tmp_path_factory.mktemp("left"), bpe_tokenizer, gate="headwise", seed=5)
    model.eval()
    model.cfg.default_padding_side = "left"
    gen = torch.Generator().manual_seed(2)
    clean, corrupted = (torch.randint(2, config["vocab_size"], (N_PROMPTS, N_POS), generator=gen) for _ in range(2))
    for tokens in (clean, corrupted):
        tokens[0, :2] = PAD
        tokens[2, :4] = PAD
    metric = partial(logit_diff, answer_tokens=[5, 6, 7], wrong_tokens=[8, 9, 10])
    return model, clean, corrupted, metric


def test_left_padding_without_a_mask_self_patches_to_the_unpatched_metric(left_padded):
    """The full forward derives the mask from the leading pads; every run a sweep starts at a later
    layer must use the same mask (it ran unmasked, and self-patching deviated by 0.083)."""
    model, clean, _, metric = left_padded
    _, cache = model.run_with_cache(clean)
    with torch.no_grad():
        expected = metric(model(clean)).item()
    for got in (
        patch_resid(model, clean, cache, metric, progress=False),
        patch_heads(model, clean, cache, metric, "z", progress=False),
        patch_heads(model, clean, cache, metric, "gate", per_position=True, progress=False),
    ):
        torch.testing.assert_close(got, torch.full_like(got, expected), atol=1e-5, rtol=0)


def test_left_padding_without_a_mask_matches_transformer_lens(left_padded):
    model, clean, corrupted, metric = left_padded
    _, clean_cache = model.run_with_cache(clean)
    pairs = [
        (tl_patching.get_act_patch_resid_pre, patch_resid, None),
        (tl_patching.get_act_patch_attn_head_out_all_pos, partial(patch_heads, activation="z"), None),
        (tl_patching.get_act_patch_attn_head_out_by_pos, partial(patch_heads, per_position=True), (0, 2, 1)),
    ]
    for theirs, ours, permute in pairs:
        expected = theirs(model, corrupted, clean_cache, metric)
        expected = expected if permute is None else expected.permute(*permute)
        torch.testing.assert_close(
            ours(model, corrupted, clean_cache, metric, progress=False), expected, atol=1e-5, rtol=0
        )


def test_a_string_prompt_is_tokenised_as_everywhere_else(left_padded):
    model, *_ = left_padded
    text = "the little girl went to the garden"
    _, cache = model.run_with_cache(text)
    metric = partial(logit_diff, answer_tokens=5, wrong_tokens=8)
    from_string = patch_heads(model, text, cache, metric, progress=False)
    from_tokens = patch_heads(model, model.to_tokens(text), cache, metric, progress=False)
    torch.testing.assert_close(from_string, from_tokens, atol=0, rtol=0)
    torch.testing.assert_close(
        patch_resid(model, [text], cache, metric, progress=False),
        patch_resid(model, model.to_tokens(text), cache, metric, progress=False),
        atol=0,
        rtol=0,
    )


@pytest.mark.parametrize("cast", ["bfloat16", "half"])
def test_half_precision_models_sweep(tmp_path, cast):
    """Every sweep runs on a bfloat16()/half() model (the float32 result buffer refused its values)
    and agrees with TransformerLens' loop on the same model to half-precision rounding."""
    model, config, _ = make_tiny(tmp_path / cast, gate="headwise", seed=3)
    getattr(model.eval(), cast)()
    gen = torch.Generator().manual_seed(0)
    clean, corrupted = (torch.randint(0, config["vocab_size"], (2, 5), generator=gen) for _ in range(2))
    metric = partial(logit_diff, answer_tokens=[5, 6], wrong_tokens=[8, 9])
    _, clean_cache = model.run_with_cache(clean)
    pairs = [
        (tl_patching.get_act_patch_resid_pre, patch_resid, None),
        (tl_patching.get_act_patch_attn_head_out_all_pos, partial(patch_heads, activation="z"), None),
        (tl_patching.get_act_patch_attn_head_out_by_pos, partial(patch_heads, per_position=True), (0, 2, 1)),
    ]
    for theirs, ours, permute in pairs:
        expected = theirs(model, corrupted, clean_cache, metric)
        expected = expected if permute is None else expected.permute(*permute)
        got = ours(model, corrupted, clean_cache, metric, progress=False)
        assert got.dtype == torch.float32
        # half precision keeps ~3 significant digits; the metric is a difference of logits ~1
        torch.testing.assert_close(got, expected.float(), atol=0.03, rtol=0)
    one_answer = partial(logit_diff, answer_tokens=5, wrong_tokens=8)
    values, lo, hi = patch_heads(model, corrupted, clean_cache, one_answer, n_boot=20, progress=False)
    assert values.dtype == lo.dtype == hi.dtype == torch.float32
