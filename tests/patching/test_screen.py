"""screen_and_verify on the bundled models: the exactly patched values equal patch_heads', and the
heads that exhaustive patching ranks highest are among those AtP* screens in."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from helpers import make_tiny as build
from helpers import random_tokens

import gated_interp as gi
from gated_interp import patching

TEMPLATES = ["The little {} was tired, so", "The old {} was hungry, so", "The young {} was sad, so"]
PAIRS = [("girl", "boy"), ("queen", "king"), ("woman", "man"), ("mother", "father"), ("sister", "brother")]


def pronoun_task(model):
    """Clean prompts with a female subject, corrupted with the male one (one differing token),
    metric = mean logit(" she") - logit(" he") at the last position (the task of notebook 04)."""
    she, he = model.to_single_token(" she"), model.to_single_token(" he")
    pairs = [(model.to_tokens(t.format(f))[0], model.to_tokens(t.format(m))[0]) for t in TEMPLATES for f, m in PAIRS]
    pairs = [(c, x) for c, x in pairs if c.shape == x.shape and int((c != x).sum()) == 1]
    length = max({len(c) for c, _ in pairs}, key=[len(c) for c, _ in pairs].count)
    pairs = [(c, x) for c, x in pairs if len(c) == length]
    clean, corrupted = torch.stack([c for c, _ in pairs]), torch.stack([x for _, x in pairs])

    def metric(logits):
        return (logits[:, -1, she] - logits[:, -1, he]).mean()

    return clean, corrupted, metric


@pytest.mark.parametrize("variant", ["baseline", "gate_headwise", "gate_elementwise"])
def test_screen_finds_the_exhaustive_top_heads(variant):
    model = gi.load_hooked(variant, size="tiny", device="cpu", progress=False)
    clean, corrupted, metric = pronoun_task(model)
    result = patching.screen_and_verify(model, clean, corrupted, metric, top_k=6)
    _, clean_cache = model.run_with_cache(clean)
    exhaustive = patching.patch_heads(model, corrupted, clean_cache, metric, progress=False)
    assert result.corrupted_metric == pytest.approx(float(metric(model(corrupted).detach())), abs=1e-5)
    table = result.table
    assert len(table) == model.cfg.n_layers * model.cfg.n_heads and table.verified.sum() == 6
    assert table.atp_star.is_monotonic_decreasing and (table.atp_star >= 0).all()
    for row in table[table.verified].itertuples():
        assert row.exact_metric == pytest.approx(exhaustive[row.layer, row.head].item(), abs=1e-5)
        assert row.exact_effect == pytest.approx(row.exact_metric - result.corrupted_metric)
    effect = (exhaustive - result.corrupted_metric).abs().flatten()
    best3 = {
        f"L{int(i) // model.cfg.n_heads}H{int(i) % model.cfg.n_heads}" for i in effect.argsort(descending=True)[:3]
    }
    assert best3 <= set(table[table.verified].label), (best3, table.head(6))
    assert result.spearman > 0.5


def test_spearman_by_hand():
    assert patching.spearman(torch.tensor([1.0, 2, 3, 4]), torch.tensor([10.0, 20, 30, 40])) == pytest.approx(1)
    assert patching.spearman(torch.tensor([1.0, 2, 3]), torch.tensor([3.0, 2, 1])) == pytest.approx(-1)
    # ranks (1, 2, 3) vs (1, 3, 2): 1 - 6 * 2 / (3 * 8) = 0.5
    assert patching.spearman(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([5.0, 9.0, 7.0])) == pytest.approx(0.5)
    assert torch.isnan(torch.tensor(patching.spearman(torch.tensor([1.0]), torch.tensor([2.0]))))


def test_top_k_covering_every_head_is_exhaustive_patching(tmp_path):
    model, _, _ = build(tmp_path / "m", gate="headwise", seed=6)
    clean, corrupted = random_tokens(model, 2, 5, seed=1), random_tokens(model, 2, 5, seed=2)
    metric = partial(patching.logit_diff, answer_tokens=1, wrong_tokens=2)
    n = model.cfg.n_layers * model.cfg.n_heads
    result = patching.screen_and_verify(
        model, clean, corrupted, metric, top_k=100, activation="gate_logits", batch_size=3
    )
    _, cache = model.run_with_cache(clean)
    full = patching.patch_heads(model, corrupted, cache, metric, activation="gate_logits", progress=False)
    assert result.table.verified.all() and len(result.table) == n
    got = torch.tensor(result.table.sort_values(["layer", "head"]).exact_metric.to_list()).reshape(full.shape)
    assert torch.allclose(got.double(), full.detach().double(), atol=1e-5)
    with pytest.raises(ValueError, match="top_k"):
        patching.screen_and_verify(model, clean, corrupted, metric, top_k=0)
