"""`generate` on Qwen3.5 / Qwen3-Next models carries the key-value cache of the full-attention layers
and the recurrent state (convolution history, delta-rule state) of the Gated DeltaNet layers.

Greedy tokens with the cache equal those without it and each padded row's tokens alone, and equal
transformers' own `generate` on the same tiny model (dense, MoE with a shared expert and packed
DeltaNet projections, Qwen3.5-MoE), from a left-padded batch of prompts of different lengths.
"""

from __future__ import annotations

import pytest
import torch
from hybrid_models import close, hybrid_checkpoint

from gated_interp.loading.load import load_folder

FAMILIES = ("qwen3_5_text", "qwen3_next", "qwen3_5_moe_text")
PROMPTS = ["the cat sat on the mat and", "a dog"]  # different lengths: the second row is padded
NEW = 10


@pytest.fixture(scope="module", params=FAMILIES)
def models(request, tmp_path_factory, bpe_tokenizer):
    """(transformers model, our model with the tokenizer) of one family, vocabulary the tokenizer's."""
    family = request.param
    folder = tmp_path_factory.mktemp(family)
    reference = hybrid_checkpoint(family, folder, seed=10 + FAMILIES.index(family), vocab_size=len(bpe_tokenizer))
    model = load_folder(folder, device="cpu", progress=False)
    model.tokenizer = bpe_tokenizer
    return reference, model


def _greedy(model, prompts, **kwargs):
    return model.generate(
        prompts, max_new_tokens=NEW, do_sample=False, stop_at_eos=False, verbose=False, return_type="tokens", **kwargs
    )


@torch.no_grad()
def test_cached_generation_equals_uncached_and_each_row_alone(models):
    _, model = models
    cached = _greedy(model, PROMPTS, padding_side="left")
    assert torch.equal(cached, _greedy(model, PROMPTS, padding_side="left", use_past_kv_cache=False))
    for row, prompt in zip(cached, PROMPTS):
        alone = _greedy(model, prompt)[0]
        assert row[-len(alone) :].tolist() == alone.tolist(), f"{prompt!r}: the padded row continues differently"
    padded = model.to_tokens(PROMPTS, padding_side="left")
    assert bool((cached[1, : int((padded[1] == 1).sum())] == 1).all()), "the short prompt was not padded"


@torch.no_grad()
def test_one_token_at_a_time_with_the_cache_gives_the_full_forwards_logits(models):
    """The state after a padded prompt, then one token per call: each step's logits are the
    uncached forward's at that position (float32 rounding: the chunked and the recurrent form of
    the delta rule sum in different orders)."""
    _, model = models
    tokens, mask = model._as_tokens(PROMPTS, None, None, "left")
    steps = torch.randint(2, len(model.tokenizer), (2, 4), generator=torch.Generator().manual_seed(0))
    full_tokens = torch.cat([tokens, steps], dim=1)
    full_mask = torch.cat([mask, torch.ones_like(steps)], dim=1)
    want = model(full_tokens, attention_mask=full_mask)
    cache = model._empty_kv_cache(2)
    got = [model(tokens, attention_mask=mask, past_kv_cache=cache)[:, -1]]
    for i in range(steps.shape[1]):
        past = full_mask[:, : tokens.shape[1] + i]
        got.append(model(steps[:, i : i + 1], past_kv_cache=cache, past_attention_mask=past)[:, -1])
    real = full_mask[:, tokens.shape[1] - 1 :].bool()[..., None]
    close(torch.stack(got, 1) * real, want[:, tokens.shape[1] - 1 :] * real, "cached step logits")


@torch.no_grad()
def test_greedy_tokens_equal_transformers_generate(models):
    reference, model = models
    tokens = model.to_tokens(PROMPTS, padding_side="left")
    mask = (torch.arange(tokens.shape[1]) >= (tokens == 1).sum(1, keepdim=True)).long()  # leading pads
    want = reference.generate(
        tokens, attention_mask=mask, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, pad_token_id=1
    )
    assert torch.equal(_greedy(model, PROMPTS, padding_side="left"), want)
