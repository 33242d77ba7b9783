"""Gate-logit attribution: contributions sum to the cached gate logit (headwise and elementwise,
biases, folded and raw norms) and match a case computed by hand."""

from __future__ import annotations

import math

import matplotlib
import pytest
import torch
from helpers import make_tiny as build
from helpers import random_tokens

import gated_interp
from gated_interp.analysis import gate_attribution, gate_attribution_stack, top_gate_contributors

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Random 3-layer models with q/k/v/gate biases and norm weights 1 ± 0.1, one per gate kind."""
    out = {}
    for gate in ("headwise", "elementwise"):
        folder = tmp_path_factory.mktemp(f"ga_{gate}")
        build(folder, gate=gate, seed=5, qkv_bias=True, num_hidden_layers=3)
        out[gate] = folder
    return out


def _load(folders, gate, fold_ln):
    model = gated_interp.load_hooked(str(folders[gate]), device="cpu", progress=False, fold_ln=fold_ln)
    with torch.no_grad():  # a nonzero attention-output bias, so the b_O rows carry something
        for block in model.blocks:
            block.attn.b_O.normal_(0, 0.1, generator=torch.Generator().manual_seed(block.layer))
    return model


@pytest.mark.parametrize("gate", ["headwise", "elementwise"])
@pytest.mark.parametrize("fold_ln", [True, False])
def test_contributions_sum_to_the_gate_logit(folders, gate, fold_ln):
    model = _load(folders, gate, fold_ln)
    _, cache = model.run_with_cache(random_tokens(model, 2, 7))
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            stack, labels = gate_attribution_stack(cache, layer, head)
            assert len(labels) == 1 + layer * (model.cfg.n_heads + 2) + 1
            assert stack.shape == (len(labels), 2, 7, model.cfg.gate_width)
            logit = cache["gate_logits", layer][:, :, head].double()
            assert (stack.sum(0) - logit).abs().max().item() < 1e-5
    # b_O rows are the (nonzero) bias read out; the last row is b_G.
    stack, labels = gate_attribution_stack(cache, 2, 1, pos=[0, -1])
    assert labels[-1] == "b_G" and labels[0] == "embed" and "L1H3" in labels and "L0 b_O" in labels
    assert stack[labels.index("L0 b_O")].abs().max() > 0
    assert torch.allclose(stack[-1], model.blocks[2].attn.b_G[1].double().expand_as(stack[-1]))


@pytest.mark.parametrize("gate", ["headwise", "elementwise"])
def test_folded_and_raw_models_give_the_same_contributions(folders, gate):
    folded, raw = _load(folders, gate, True), _load(folders, gate, False)
    tokens = random_tokens(folded, 2, 6, seed=3)
    _, cache_f = folded.run_with_cache(tokens)
    _, cache_r = raw.run_with_cache(tokens)
    a, labels = gate_attribution_stack(cache_f, 2, 3)
    b, _ = gate_attribution_stack(cache_r, 2, 3)
    assert (a - b).abs().max().item() < 1e-4  # float32 folding rounds w * W once (see test_tl_parity_weights)


def test_a_case_computed_by_hand(folders):
    """Layer 0 reads only the embedding: with ln1.w = 2, W_G[h] = unit vector e_5 and b_G = 0.5,
    the embedding's contribution is 2 * x[5] / sqrt(mean(x^2) + eps) and the bias's is 0.5."""
    model = _load(folders, "headwise", False)
    with torch.no_grad():
        model.blocks[0].ln1.w.fill_(2.0)
        model.blocks[0].attn.W_G.zero_()
        model.blocks[0].attn.W_G[1, 5, 0] = 1.0
        model.blocks[0].attn.b_G.fill_(0.5)
    tokens = torch.tensor([[3, 17, 42]])
    _, cache = model.run_with_cache(tokens)
    table = gate_attribution(cache, 0, 1, pos=[0, 2])
    x = model.W_E[tokens[0]].detach().double()
    expected = 2 * x[:, 5] / torch.sqrt(x.pow(2).mean(-1) + model.cfg.rms_norm_eps)
    embed = table[table.component == "embed"].contribution.to_numpy()
    assert embed == pytest.approx(expected[[0, 2]].numpy(), abs=1e-6)
    assert table[table.component == "b_G"].contribution.to_list() == pytest.approx([0.5, 0.5])
    # unnormalised read-out: just x[5] (times nothing: apply_ln=False skips ln1.w and the scale)
    raw = gate_attribution(cache, 0, 1, pos=0, apply_ln=False)
    assert raw[raw.component == "embed"].contribution.item() == pytest.approx(x[0, 5].item(), abs=1e-6)


def test_elementwise_direction_and_table_layout(folders):
    model = _load(folders, "elementwise", True)
    _, cache = model.run_with_cache(random_tokens(model, 3, 5))
    d = model.cfg.gate_width
    per_element = gate_attribution(cache, 1, 0, pos=0)
    assert len(per_element) == (1 + 6 + 1) * d
    assert list(per_element.columns) == [
        "component",
        "kind",
        "source_layer",
        "source_head",
        "pos",
        "gate",
        "contribution",
    ]
    mean_dir = torch.ones(d) / d
    summed = gate_attribution(cache, 1, 0, pos=0, direction=mean_dir)
    assert set(summed.gate) == {-1}
    expected = per_element.groupby("component", sort=False).contribution.mean()
    assert summed.set_index("component").contribution.to_numpy() == pytest.approx(expected.to_numpy(), abs=1e-9)
    assert summed.contribution.sum() == pytest.approx(cache["gate_logits", 1][:, 0, 0].mean().item(), abs=1e-5)
    per_batch = gate_attribution(cache, 1, 0, pos=0, batch_mean=False, direction=mean_dir)
    assert sorted(set(per_batch.batch)) == [0, 1, 2]
    row = per_batch[per_batch.component == "L0H2"].iloc[0]
    assert (row.kind, row.source_layer, row.source_head) == ("head", 0, 2)
    top = top_gate_contributors(summed, k=3)
    assert len(top) == 3 and top.contribution.abs().is_monotonic_decreasing


def test_bad_input_is_refused(folders, tmp_path):
    model = _load(folders, "headwise", True)
    _, cache = model.run_with_cache(random_tokens(model, 1, 4))
    with pytest.raises(ValueError, match="layer 9"):
        gate_attribution(cache, 9, 0)
    with pytest.raises(ValueError, match="outside the cached sequence"):
        gate_attribution(cache, 1, 0, pos=10)
    with pytest.raises(ValueError, match="direction"):
        gate_attribution(cache, 1, 0, direction=torch.ones(3))
    _, small = model.run_with_cache(random_tokens(model, 1, 4), names_filter=lambda n: "hook_z" in n)
    with pytest.raises(KeyError, match="hook_embed"):
        gate_attribution(small, 1, 0)
    ungated, _, _ = build(tmp_path / "none", gate="none")
    _, cache0 = ungated.run_with_cache(random_tokens(ungated, 1, 4))
    with pytest.raises(ValueError, match="gated model"):
        gate_attribution(cache0, 1, 0)


def test_plot_labels_heads_zero_based(folders):
    from gated_interp.plotting import gate_contributors

    model = _load(folders, "headwise", True)
    _, cache = model.run_with_cache(random_tokens(model, 2, 5))
    tables = {f"L2H{h}": gate_attribution(cache, 2, h, pos=0) for h in range(2)}
    fig = gate_contributors(tables, k=5, data="2 random sequences, position 0")
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles[0].startswith("L2H0") and titles[1].startswith("L2H1")
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert len(labels) == 5 and all(lab in tables["L2H0"].component.to_list() for lab in labels)
    widths = [p.get_width() for p in fig.axes[0].patches]
    assert len(widths) == 5 and not all(math.isclose(w, 0) for w in widths)
