"""Gated (and ungated) models against the independent plain-PyTorch reference in tests/reference.py.

Each model is built the way users get one: a checkpoint folder in the released format, written
from random weights, loaded with `gated_interp.load_hooked`.

Tolerances: logits and activations within 1e-4 absolute in float32. The two implementations do the
same float32 arithmetic in a different order (einsum vs. F.linear, SDPA vs. explicit softmax), so
they differ by ~1e-6 on O(1) values; a layout or convention mistake gives O(0.1..1) differences.
Fast path (SDPA) vs. materialised pattern inside our own model: 1e-5, since only the attention
kernel differs.
"""

from __future__ import annotations

import tempfile

import pytest
import torch
import torch.nn.functional as F
from helpers import gate_overrides, make_tiny, max_diff, without_shape_checks, write_checkpoint
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import random_released_checkpoint, reference_activations, tiny_config

import gated_interp

TOL = 1e-4
FAST_VS_SLOW_TOL = 1e-5


@st.composite
def model_cases(draw):
    n_kv = draw(st.sampled_from([1, 2, 4]))
    groups = draw(st.sampled_from([1, 2, 4]))
    d_head = draw(st.sampled_from([4, 8, 16]))
    gate = draw(st.sampled_from(["none", "headwise", "elementwise"]))
    config = tiny_config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=n_kv * groups,
        num_key_value_heads=n_kv,
        head_dim=d_head,
        intermediate_size=48,
        vocab_size=53,
        use_qk_norm=draw(st.booleans()),
        qkv_bias=draw(st.booleans()),
        tie_word_embeddings=draw(st.booleans()),
        **gate_overrides(gate),
    )
    lengths = draw(st.lists(st.integers(1, 12), min_size=1, max_size=3))
    side = draw(st.sampled_from(["right", "left"]))
    seed = draw(st.integers(0, 2**16))
    return config, gate, lengths, side, seed


def _padded_batch(lengths, side, vocab, seed):
    """Random token rows of the given lengths, padded to the longest (pad id 0), and their mask."""
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    tokens = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros_like(tokens)
    spans = []
    for row, n in enumerate(lengths):
        span = slice(0, n) if side == "right" else slice(width - n, width)
        tokens[row, span] = torch.randint(0, vocab, (n,), generator=gen)
        mask[row, span] = 1
        spans.append(span)
    return tokens, mask, spans


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@pytest.mark.slow
@given(case=model_cases())
@torch.no_grad()
def test_matches_reference(case):
    config, gate, lengths, side, seed = case
    sd = random_released_checkpoint(config, seed=seed)
    with tempfile.TemporaryDirectory() as folder:
        write_checkpoint(folder, config, sd)
        model = gated_interp.load_hooked(folder, device="cpu", progress=False)
    assert model.cfg.gate == gate
    tokens, mask, spans = _padded_batch(lengths, side, config["vocab_size"], seed)
    padded = not bool(mask.all())
    attention_mask = mask if padded else None
    ref = reference_activations(config, sd, tokens, mask)

    fast = model(tokens, attention_mask=attention_mask)  # SDPA path
    logits, cache = model.run_with_cache(tokens, attention_mask=attention_mask)  # materialised pattern
    for row, span in enumerate(spans):
        assert max_diff(fast[row, span], ref["logits"][row, span]) <= TOL
        assert max_diff(logits[row, span], ref["logits"][row, span]) <= TOL

    for layer in range(config["num_hidden_layers"]):
        names = ["q", "z", "resid_post"] + (["gate_logits", "z_pre_gate"] if gate != "none" else [])
        for name in names:
            ours = cache[f"blocks.{layer}.attn.hook_{name}" if name != "resid_post" else f"blocks.{layer}.hook_{name}"]
            theirs = ref[f"blocks.{layer}.{name}"]
            for row, span in enumerate(spans):  # real positions only: padding rows are unused
                assert max_diff(ours[row, span], theirs[row, span]) <= TOL, (layer, name)
        pattern = cache["pattern", layer]
        for row, span in enumerate(spans):
            assert max_diff(pattern[row, :, span], ref[f"blocks.{layer}.pattern"][row, :, span]) <= TOL
        if gate != "none":
            expected_gate = torch.sigmoid(ref[f"blocks.{layer}.gate_logits"])
            assert cache["gate", layer].shape[-1] == (1 if gate == "headwise" else config["head_dim"])
            for row, span in enumerate(spans):
                assert max_diff(cache["gate", layer][row, span], expected_gate[row, span]) <= TOL
        else:
            assert f"blocks.{layer}.attn.hook_gate" not in cache.cache_dict


@pytest.fixture
def gated(tmp_path):
    """A headwise-gated GQA model with biases, loaded from a checkpoint."""
    model, config, sd = make_tiny(tmp_path / "ckpt", gate="headwise", seed=4, qkv_bias=True, num_hidden_layers=3)
    return model, config, sd


def _tokens(config, batch=3, pos=10, seed=0):
    return torch.randint(0, config["vocab_size"], (batch, pos), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("padded", [False, True])
@torch.no_grad()
def test_sdpa_fast_path_equals_materialised_pattern(tiny_model, padded):
    model, config, _ = tiny_model
    tokens = _tokens(config)
    mask = None
    if padded:
        mask = torch.ones_like(tokens)
        mask[0, 6:] = 0
        mask[1, :3] = 0
    fast = model(tokens, attention_mask=mask)
    patterns = []
    slow_hooked = model.run_with_hooks(
        tokens,
        attention_mask=mask,
        fwd_hooks=[(lambda name: name.endswith("hook_pattern"), lambda t, hook: patterns.append(t))],
    )
    slow_cached, _ = model.run_with_cache(tokens, attention_mask=mask)
    assert len(patterns) == config["num_hidden_layers"]  # the hook really forced the slow path
    assert max_diff(fast, slow_hooked) <= FAST_VS_SLOW_TOL
    assert max_diff(fast, slow_cached) <= FAST_VS_SLOW_TOL
    assert fast.std() > 0.1


@torch.no_grad()
def test_stop_at_layer_returns_resid_pre(gated):
    model, config, _ = gated
    tokens = _tokens(config)
    _, cache = model.run_with_cache(tokens)
    n = config["num_hidden_layers"]
    assert max_diff(model(tokens, stop_at_layer=0), cache["hook_embed"]) == 0
    for layer in range(n):
        out = model(tokens, stop_at_layer=layer)
        assert out.shape == (3, 10, config["hidden_size"])
        assert max_diff(out, cache[f"blocks.{layer}.hook_resid_pre"]) <= FAST_VS_SLOW_TOL
    assert max_diff(model(tokens, stop_at_layer=n), cache[f"blocks.{n - 1}.hook_resid_post"]) <= FAST_VS_SLOW_TOL
    # negative layers count from the end, as in TransformerLens
    assert max_diff(model(tokens, stop_at_layer=-1), cache[f"blocks.{n - 1}.hook_resid_pre"]) <= FAST_VS_SLOW_TOL


@torch.no_grad()
def test_return_types_and_loss_is_cross_entropy(gated):
    model, config, _ = gated
    tokens = _tokens(config)
    logits = model(tokens)
    loss = model(tokens, return_type="loss")
    both_logits, both_loss = model(tokens, return_type="both")
    assert model(tokens, return_type=None) is None
    manual = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
    assert loss.ndim == 0
    assert abs(loss.item() - manual.item()) <= 1e-5
    assert torch.equal(both_logits, logits)
    assert both_loss.item() == loss.item()
    per_token = model(tokens, return_type="loss", loss_per_token=True)
    manual_per_token = F.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")
    assert per_token.shape == (3, 9)
    assert max_diff(per_token, manual_per_token) <= 1e-5
    with without_shape_checks(), pytest.raises(ValueError, match="return_type"):
        model(tokens, return_type="probs")


@pytest.mark.parametrize("side", ["right", "left"])
@torch.no_grad()
def test_padded_batch_loss_excludes_padding(gated, side):
    model, config, _ = gated
    lengths = [10, 4, 7]
    tokens, mask, spans = _padded_batch(lengths, side, config["vocab_size"], seed=2)
    loss = model(tokens, attention_mask=mask, return_type="loss")
    # the mean of each sequence's own next-token losses, weighted by its number of predictions
    total, count = 0.0, 0
    for row, span in enumerate(spans):
        seq = tokens[row, span][None]
        per_token = model(seq, return_type="loss", loss_per_token=True)
        total += per_token.sum().item()
        count += per_token.numel()
    assert abs(loss.item() - total / count) <= 1e-5
    # the ids under the padding do not matter
    other = tokens.masked_fill(mask == 0, 5)
    assert abs(model(other, attention_mask=mask, return_type="loss").item() - loss.item()) <= 1e-6
