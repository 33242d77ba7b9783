"""AtP*: the QK fix, the gate fix and GradDrop against references computed with the model's own
forward pass (patch, read the recomputed pattern / z, dot with the gradient)."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from helpers import make_tiny as build
from helpers import random_tokens, without_shape_checks

from gated_interp.patching import attribution_patching, metrics
from gated_interp.patching.atp_star import atp_star
from gated_interp.patching.runs import corrupted_with_grads as _corrupted_with_grads


@pytest.fixture(scope="module", params=["headwise", "elementwise"])
def setup(request, tmp_path_factory):
    model, _, _ = build(tmp_path_factory.mktemp(f"atp_{request.param}"), gate=request.param, seed=4, qkv_bias=True)
    model = model.double()
    clean, corrupted = random_tokens(model, 2, 6, seed=1), random_tokens(model, 2, 6, seed=2)
    metric = partial(metrics.logit_diff, answer_tokens=[3, 5], wrong_tokens=[7, 9])
    return model, clean, corrupted, metric


def _grads(model, corrupted, metric, names):
    acts, grads = _corrupted_with_grads(model, corrupted, metric, names, None)
    return acts, grads


def _patched_capture(model, tokens, hook_name, setter, capture):
    """Run `tokens` with `setter(act)` at `hook_name` and return the activation at `capture`."""
    seen = {}

    def keep(act, hook):
        seen["x"] = act.detach()

    with torch.no_grad():
        model.run_with_hooks(tokens, fwd_hooks=[(hook_name, lambda a, hook: setter(a.clone())), (capture, keep)])
    return seen["x"]


def test_qk_fix_equals_the_recomputed_pattern_dotted_with_its_gradient(setup):
    model, clean, corrupted, metric = setup
    _, clean_cache = model.run_with_cache(clean)
    est = atp_star(model, clean, corrupted, metric, ["q", "k"], grad_drop=False)
    per_pos = atp_star(model, clean, corrupted, metric, ["q", "k"], per_position=True, grad_drop=False)
    groups = model.cfg.n_groups
    for layer in range(model.cfg.n_layers):
        pat = f"blocks.{layer}.attn.hook_pattern"
        acts, grads = _grads(model, corrupted, metric, [pat])
        for head in range(model.cfg.n_heads):

            def set_q(a, head=head, layer=layer):
                a[:, :, head] = clean_cache[f"blocks.{layer}.attn.hook_q"][:, :, head]
                return a

            new = _patched_capture(model, corrupted, f"blocks.{layer}.attn.hook_q", set_q, pat)
            ref = ((new - acts[pat]) * grads[pat]).sum()
            assert est["q"][layer, head].item() == pytest.approx(ref.item(), abs=1e-9)
            assert per_pos["q"][layer, head].sum().item() == pytest.approx(ref.item(), abs=1e-9)
        for kv in range(model.cfg.n_key_value_heads):
            group = slice(kv * groups, (kv + 1) * groups)
            for pos in [None, 0, 3, 5]:

                def set_k(a, kv=kv, pos=pos, layer=layer):
                    where = slice(None) if pos is None else pos
                    a[:, where, kv] = clean_cache[f"blocks.{layer}.attn.hook_k"][:, where, kv]
                    return a

                new = _patched_capture(model, corrupted, f"blocks.{layer}.attn.hook_k", set_k, pat)
                ref = ((new - acts[pat]) * grads[pat])[:, group].sum()
                got = est["k"][layer, kv] if pos is None else per_pos["k"][layer, kv, pos]
                assert got.item() == pytest.approx(ref.item(), abs=1e-9)


def test_gate_fix_equals_the_recomputed_z_dotted_with_its_gradient(setup):
    model, clean, corrupted, metric = setup
    _, clean_cache = model.run_with_cache(clean)
    est = atp_star(model, clean, corrupted, metric, ["gate_logits", "z"], per_position=True, grad_drop=False)
    plain = attribution_patching(model, clean, corrupted, metric, ["z"], per_position=True)
    assert torch.allclose(est["z"], plain["z"])  # z nodes are plain AtP
    layer, head, pos = 1, 2, 4
    z = f"blocks.{layer}.attn.hook_z"
    acts, grads = _grads(model, corrupted, metric, [z])

    def set_gate(a):
        a[:, pos, head] = clean_cache[f"blocks.{layer}.attn.hook_gate_logits"][:, pos, head]
        return a

    new = _patched_capture(model, corrupted, f"blocks.{layer}.attn.hook_gate_logits", set_gate, z)
    ref = ((new - acts[z]) * grads[z]).sum()
    assert est["gate_logits"][layer, head, pos].item() == pytest.approx(ref.item(), abs=1e-9)


def test_self_patching_gives_zero(setup):
    """Self-patching with an identical clean run gives exactly 0 for every node and method."""
    model, _, corrupted, metric = setup
    for grad_drop in (False, True):
        est = atp_star(model, corrupted, corrupted, metric, grad_drop=grad_drop, per_position=True)
        assert all(v.abs().max().item() < 1e-12 for v in est.values())


def test_grad_drop_normalisation(setup):
    """2 layers: for last-layer nodes GradDrop is |AtP| (dropping layer 0 changes nothing upstream of
    them, dropping layer 1 gives 0; 1/(L-1) = 1). For layer-0 nodes it is |direct-path AtP|."""
    model, clean, corrupted, metric = setup
    signed = atp_star(model, clean, corrupted, metric, ["z", "q", "gate_logits"], grad_drop=False)
    star = attribution_patching(model, clean, corrupted, metric, ["z", "q", "gate_logits"], method="atp*")
    for name in signed:
        assert torch.allclose(star[name][1], signed[name][1].abs())
        assert (star[name] >= 0).all()
    # Zero layer 1's writing weights: the only path from layer 0 to the logits is direct, so the
    # GradDrop magnitude of layer-0 nodes is exactly |AtP|.
    quiet = model
    with torch.no_grad():
        saved = [quiet.blocks[1].attn.W_O.clone(), quiet.blocks[1].mlp.W_out.clone()]
        quiet.blocks[1].attn.W_O.zero_()
        quiet.blocks[1].mlp.W_out.zero_()
    try:
        s = atp_star(quiet, clean, corrupted, metric, ["z", "k"], grad_drop=False)
        g = atp_star(quiet, clean, corrupted, metric, ["z", "k"], grad_drop=True)
        for name in s:
            assert torch.allclose(g[name][0], s[name][0].abs())
    finally:
        with torch.no_grad():
            quiet.blocks[1].attn.W_O.copy_(saved[0])
            quiet.blocks[1].mlp.W_out.copy_(saved[1])


def test_bad_input(setup):
    model, clean, corrupted, metric = setup
    with pytest.raises(ValueError, match="method"):
        attribution_patching(model, clean, corrupted, metric, method="atp**")
    with pytest.raises(ValueError, match="AtP\\* covers"):
        attribution_patching(model, clean, corrupted, metric, ["pattern"], method="atp*")
    with without_shape_checks(), pytest.raises(ValueError, match="same \\[batch, pos\\]"):
        atp_star(model, clean[:, :4], corrupted, metric)
