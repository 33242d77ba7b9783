"""Interventions against exact expectations: an open gate is no gate, a one-prompt mean is the
prompt itself, sink removal renormalises, ablating every head leaves only b_O."""

from __future__ import annotations

import pytest
import torch
from helpers import constant_gates, make_tiny, random_tokens, ungated_state
from reference import reference_logits

from gated_interp.analysis import (
    ablation_effects,
    fix_gates,
    intervene,
    mean_ablate_heads,
    mean_gates,
    open_gates,
    remove_sink,
    zero_ablate_heads,
)


@pytest.fixture(autouse=True)
def no_grad():
    # Scoped to each test: a module-level set_grad_enabled(False) would leak into other test files.
    with torch.no_grad():
        yield


@pytest.fixture(scope="module", params=["headwise", "elementwise"])
def gated(request, tmp_path_factory):
    """(model, config, state dict) of a gated tiny model with biases everywhere."""
    return make_tiny(tmp_path_factory.mktemp(request.param), gate=request.param, seed=5, qkv_bias=True)


def test_open_gates_is_the_ungated_model(gated):
    model, config, state = gated
    tokens = random_tokens(model, 2, 7)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    expected = reference_logits(*ungated_state(config, state), tokens, mask)
    opened = model.run_with_hooks(tokens, attention_mask=mask, fwd_hooks=open_gates(model))
    real = mask.bool()
    torch.testing.assert_close(opened[real], expected[real], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(model(tokens, attention_mask=mask)[real], expected[real], atol=1e-3)


def test_intervene_attaches_and_removes(gated):
    model = gated[0]
    tokens = random_tokens(model, 1, 5)
    clean = model(tokens)
    with intervene(model, open_gates(model)) as same:
        assert same is model
        opened = model(tokens)
    torch.testing.assert_close(model(tokens), clean)
    torch.testing.assert_close(opened, model.run_with_hooks(tokens, fwd_hooks=open_gates(model)))


def test_fix_gates_only_touches_chosen_heads(gated):
    model = gated[0]
    tokens = random_tokens(model, 1, 5)
    _, clean = model.run_with_cache(tokens)
    with intervene(model, fix_gates(model, 0.25, layers=[1], heads=[0, 2])):
        _, cache = model.run_with_cache(tokens)
    assert (cache["gate", 1][:, :, [0, 2]] == 0.25).all()
    torch.testing.assert_close(cache["gate", 1][:, :, [1, 3]], clean["gate", 1][:, :, [1, 3]])
    torch.testing.assert_close(cache["gate", 0], clean["gate", 0])


def test_closed_gates_leave_only_b_O(gated):
    model = gated[0]
    with intervene(model, fix_gates(model, 0.0)):
        _, cache = model.run_with_cache(random_tokens(model, 2, 4))
    for layer in range(model.cfg.n_layers):
        torch.testing.assert_close(cache["attn_out", layer], model.blocks[layer].attn.b_O.expand(2, 4, -1))


def test_mean_gates_over_batch_of_the_prompt_itself_changes_nothing(gated):
    model = gated[0]
    tokens = random_tokens(model, 1, 6)
    hooks = mean_gates(model, tokens, over="batch")
    torch.testing.assert_close(model.run_with_hooks(tokens, fwd_hooks=hooks), model(tokens))
    with pytest.raises(ValueError, match="over=\\('batch', 'pos'\\)"):
        model.run_with_hooks(random_tokens(model, 1, 8), fwd_hooks=hooks)


def test_mean_gates_default_is_query_independent(gated):
    model = gated[0]
    reference = random_tokens(model, 3, 6, seed=1)
    mask = torch.tensor([[1] * 6, [1] * 3 + [0] * 3, [1] * 6])
    hooks = mean_gates(model, reference, attention_mask=mask)
    _, clean = model.run_with_cache(reference, attention_mask=mask)
    expected = clean["gate", 0][mask.bool()].mean(0)  # [head, gate], real positions only
    with intervene(model, hooks):
        _, cache = model.run_with_cache(random_tokens(model, 2, 9))
    torch.testing.assert_close(cache["gate", 0], expected.expand(2, 9, -1, -1))


def test_mean_gates_of_a_constant_gate_changes_nothing(tmp_path):
    model, _, _ = make_tiny(tmp_path, gate="headwise", qkv_bias=True)
    constant_gates(model, 0.3)
    tokens = random_tokens(model, 2, 5)
    hooks = mean_gates(model, random_tokens(model, 2, 3, seed=9))
    torch.testing.assert_close(model.run_with_hooks(tokens, fwd_hooks=hooks), model(tokens))


def test_gate_interventions_refuse_an_ungated_model(tmp_path):
    model, _, _ = make_tiny(tmp_path, gate="none")
    for make in (open_gates, lambda m: fix_gates(m, 0.5), lambda m: mean_gates(m, random_tokens(m, 1, 3))):
        with pytest.raises(ValueError, match="ungated"):
            make(model)


def test_layer_and_head_ranges_are_checked(gated):
    model = gated[0]
    with pytest.raises(ValueError, match="2 layers"):
        open_gates(model, layers=[2])
    with pytest.raises(ValueError, match="4 heads"):
        zero_ablate_heads(model, [(0, 4)])


# ---- heads -------------------------------------------------------------------------------------
def test_zero_ablating_a_whole_layer_leaves_b_O(gated):
    model = gated[0]
    tokens = random_tokens(model, 2, 5)
    with intervene(model, zero_ablate_heads(model, [(1, h) for h in range(4)])):
        _, cache = model.run_with_cache(tokens)
    torch.testing.assert_close(cache["attn_out", 1], model.blocks[1].attn.b_O.expand(2, 5, -1))
    _, clean = model.run_with_cache(tokens)
    torch.testing.assert_close(cache["attn_out", 0], clean["attn_out", 0])


def test_mean_ablate_heads_writes_the_reference_mean(gated):
    model = gated[0]
    reference = random_tokens(model, 3, 5, seed=2)
    _, clean = model.run_with_cache(reference)
    hooks = mean_ablate_heads(model, [(0, 1), (1, 3)], reference)
    with intervene(model, hooks):
        _, cache = model.run_with_cache(random_tokens(model, 2, 4))
    torch.testing.assert_close(cache["z", 0][:, :, 1], clean["z", 0][:, :, 1].mean((0, 1)).expand(2, 4, -1))
    torch.testing.assert_close(cache["z", 1][:, :, 3], clean["z", 1][:, :, 3].mean((0, 1)).expand(2, 4, -1))


# ---- sinks -------------------------------------------------------------------------------------
def test_remove_sink_renormalises(gated):
    model = gated[0]
    tokens = random_tokens(model, 2, 6)
    _, clean = model.run_with_cache(tokens)
    with intervene(model, remove_sink(model, layers=[0], heads=[1, 2])):
        _, cache = model.run_with_cache(tokens)
    new, old = cache["pattern", 0], clean["pattern", 0]
    torch.testing.assert_close(new.sum(-1), torch.ones(2, 4, 6))
    assert (new[:, [1, 2], 1:, 0] == 0).all()
    torch.testing.assert_close(new[:, [1, 2], 0], old[:, [1, 2], 0])  # query 0 keeps its attention
    rest = old[:, [1, 2], 1:, 1:]
    torch.testing.assert_close(new[:, [1, 2], 1:, 1:], rest / rest.sum(-1, keepdim=True))
    torch.testing.assert_close(new[:, [0, 3]], old[:, [0, 3]])
    assert not torch.allclose(cache["resid_post", 1], clean["resid_post", 1])


def test_remove_sink_with_padding_acts_on_each_sequence_as_alone(gated):
    """Right padding: the real positions of each row get exactly what the sequence gets run alone
    under the same intervention, every logit stays finite, position 0 (which only sees itself) is
    untouched, and query 1 (whose attention to token 0 is removed) changes."""
    model = gated[0]
    tokens = random_tokens(model, 2, 5)
    mask = torch.tensor([[1] * 5, [1, 1, 0, 0, 0]])
    logits = model.run_with_hooks(tokens, attention_mask=mask, fwd_hooks=remove_sink(model))
    assert torch.isfinite(logits).all()
    alone = [
        model.run_with_hooks(tokens[i : i + 1, : int(mask[i].sum())], fwd_hooks=remove_sink(model)) for i in (0, 1)
    ]
    torch.testing.assert_close(logits[0], alone[0][0])
    torch.testing.assert_close(logits[1, :2], alone[1][0])
    clean = model(tokens, attention_mask=mask)
    torch.testing.assert_close(logits[:, 0], clean[:, 0])
    assert not torch.allclose(logits[1, 1], clean[1, 1], atol=1e-3)


def test_remove_sink_empties_a_row_that_only_attended_to_the_sink(gated):
    """A query whose whole attention was on token 0 has nothing left to renormalise: its row
    becomes zeros (the head writes nothing there), not 0/0 = NaN. Query 0 keeps its row, other
    rows are renormalised over the remaining keys, and heads not chosen are left alone."""
    model = gated[0]
    ((name, hook),) = remove_sink(model, layers=[1], heads=[0])
    assert name == "blocks.1.attn.hook_pattern"
    rows = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.5, 0.125, 0.375]])
    pattern = rows.expand(2, model.cfg.n_heads, 3, 3).clone()
    new = hook(pattern.clone(), None)
    assert torch.isfinite(new).all()
    expected = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.25, 0.75]])
    torch.testing.assert_close(new[:, 0], expected.expand(2, 3, 3))
    torch.testing.assert_close(new[:, 1:], pattern[:, 1:])


# ---- effects -----------------------------------------------------------------------------------
def test_ablation_effects_table(gated):
    model, config, state = gated
    tokens = random_tokens(model, 3, 6)
    mask = torch.tensor([[1] * 6, [1] * 5 + [0], [1] * 3 + [0] * 3])

    def top1(logits, tokens, mask):
        return float((logits[:, :-1].argmax(-1) == tokens[:, 1:]).float().mean())

    interventions = {
        "open": open_gates(model),
        "no sink": remove_sink(model),
        "L0 off": zero_ablate_heads(model, [(0, 0)]),
    }
    frame = ablation_effects(
        model, tokens, interventions, metric=top1, attention_mask=mask, batch_size=2, progress=False
    )
    assert list(frame.index) == ["clean", "open", "no sink", "L0 off"]
    assert list(frame.columns) == ["loss", "metric", "delta_loss", "delta_metric"]
    assert frame.loc["clean", "delta_loss"] == 0
    assert frame.loc["clean", "loss"] == pytest.approx(float(model(tokens, attention_mask=mask, return_type="loss")))
    open_logits = reference_logits(*ungated_state(config, state), tokens, mask)
    assert frame.loc["open", "loss"] == pytest.approx(float(model.loss_fn(open_logits, tokens, mask)), rel=1e-4)
    assert frame.loc["open", "delta_loss"] == pytest.approx(frame.loc["open", "loss"] - frame.loc["clean", "loss"])
    with pytest.raises(ValueError, match="clean"):
        ablation_effects(model, tokens, {"clean": []}, progress=False)
