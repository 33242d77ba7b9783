"""By-position sweeps start at the patched layer and position (the corrupted run's keys and values
as a key-value cache): each value must equal a full forward of the patched batch, padded batches
included; the planner says what a sweep costs before it runs."""

from __future__ import annotations

import itertools
from functools import partial

import pytest
import torch
from helpers import make_tiny

from gated_interp.hooks import hook_name
from gated_interp.patching import SweepPlan, logit_diff, patch_heads, patch_resid

N_PROMPTS, N_POS, N_LAYERS, N_HEADS, N_KV = 3, 6, 2, 4, 2


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model, config, _ = make_tiny(tmp_path_factory.mktemp("prefix"), gate="headwise", seed=7)
    model.eval()
    gen = torch.Generator().manual_seed(4)
    clean, corrupted = (torch.randint(0, config["vocab_size"], (N_PROMPTS, N_POS), generator=gen) for _ in range(2))
    # each row's last real token: right padding ends row 1 at 3; left padding keeps the last column
    metric = partial(logit_diff, answer_tokens=[5, 6, 7], wrong_tokens=[8, 9, 10], position=[-1, 3, -1])
    return model, clean, corrupted, metric


def masks() -> dict[str, torch.Tensor | None]:
    right = torch.ones(N_PROMPTS, N_POS, dtype=torch.long)
    right[1, 4:] = 0
    left = torch.ones(N_PROMPTS, N_POS, dtype=torch.long)
    left[0, :2] = 0  # rows 0 and 2 start later, by different amounts: their prefixes differ per row
    left[2, :3] = 0
    return {"none": None, "right": right, "left": left}


@torch.no_grad()
def full_forward_sweep(model, tokens, mask, clean_cache, metric, activation, per_head):
    """The reference: one full forward of the whole batch per patch, the clean value written at one
    (head, position) by a hook, as TransformerLens' loop does, with the mask passed through."""
    values = torch.empty(N_LAYERS, *((N_KV if activation == "k" else N_HEADS,) if per_head else ()), N_POS)
    for index in itertools.product(*(range(size) for size in values.shape)):
        layer, *head, pos = index
        name = hook_name(activation, layer)

        def hook(act, hook, head=head, pos=pos, name=name):
            act = act.clone()
            if activation == "pattern":
                act[:, head[0], pos] = clean_cache[name][:, head[0], pos]
            else:
                where = (slice(None), pos, *head)
                act[where] = clean_cache[name][where]
            return act

        values[index] = metric(model.run_with_hooks(tokens, attention_mask=mask, fwd_hooks=[(name, hook)]))
    return values


@pytest.mark.parametrize("padding", ["none", "right", "left"])
def test_by_position_sweeps_equal_a_full_forward_per_patch(setup, padding):
    model, clean, corrupted, metric = setup
    mask = masks()[padding]
    _, clean_cache = model.run_with_cache(clean, attention_mask=mask)
    kwargs = dict(attention_mask=mask, progress=False, batch_size=5)  # chunks of mixed start positions
    for activation in ("resid_pre", "resid_mid"):
        got = patch_resid(model, corrupted, clean_cache, metric, activation, **kwargs)
        expected = full_forward_sweep(model, corrupted, mask, clean_cache, metric, activation, per_head=False)
        torch.testing.assert_close(got, expected, atol=2e-5, rtol=0)
    for activation in ("z", "gate", "k", "pattern"):
        got = patch_heads(model, corrupted, clean_cache, metric, activation, per_position=True, **kwargs)
        expected = full_forward_sweep(model, corrupted, mask, clean_cache, metric, activation, per_head=True)
        torch.testing.assert_close(got, expected, atol=2e-5, rtol=0)


def test_dry_run_counts_the_work_and_runs_nothing(setup):
    model, clean, corrupted, _ = setup
    _, clean_cache = model.run_with_cache(clean)

    def never(logits):
        raise AssertionError("a dry run must not call the metric")

    plan = patch_resid(model, corrupted, clean_cache, never, dry_run=True)
    assert isinstance(plan, SweepPlan)
    n_patches = N_LAYERS * N_POS
    assert plan.n_patches == n_patches
    assert plan.tl_token_layers == n_patches * N_PROMPTS * N_POS * N_LAYERS  # one full forward per patch: 432
    # each copy from its own layer l and position p: prompts x (pos - p) tokens through layers - l blocks
    assert plan.floor_token_layers == N_PROMPTS * sum(N_POS - p for p in range(N_POS)) * (2 + 1)  # 189
    assert plan.floor_token_layers <= plan.token_layers < plan.tl_token_layers
    assert plan.n_forwards == len(plan.chunks) + 1
    assert sorted(torch.cat([c.rows for c in plan.chunks]).tolist()) == list(range(n_patches))
    assert "TransformerLens" in str(plan) and f"{plan.n_forwards} forwards" in str(plan)

    one_each = patch_heads(model, corrupted, clean_cache, never, per_position=True, batch_size=1, dry_run=True)
    assert one_each.max_copies == 1 and one_each.n_forwards == N_LAYERS * N_HEADS * N_POS + 1
    # z copies start after the patched layer's attention: half of that block
    assert one_each.floor_token_layers == N_PROMPTS * N_HEADS * sum(N_POS - p for p in range(N_POS)) * (1.5 + 0.5)
    squeezed = patch_heads(model, corrupted, clean_cache, never, per_position=True, memory_budget=1, dry_run=True)
    assert squeezed.max_copies == 1
    all_positions = patch_heads(model, corrupted, clean_cache, never, dry_run=True)
    assert all(c.start == 0 for c in all_positions.chunks)


def test_planner_refuses_bad_sizes(setup):
    model, clean, corrupted, metric = setup
    _, clean_cache = model.run_with_cache(clean)
    with pytest.raises(ValueError, match="memory_budget"):
        patch_resid(model, corrupted, clean_cache, metric, memory_budget=0, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        patch_heads(model, corrupted, clean_cache, metric, batch_size=0, progress=False)


def test_progress_counts_copies(setup, capsys):
    model, clean, corrupted, metric = setup
    _, clean_cache = model.run_with_cache(clean)
    patch_resid(model, corrupted, clean_cache, metric, progress=True)
    err = capsys.readouterr().err
    assert f"{N_LAYERS * N_POS}/{N_LAYERS * N_POS}" in err and "copy" in err
