"""Hook-edit semantics, as in TransformerLens: what a hook function returns is what the model uses
downstream. Every hook point's edit reaches the logits (no hook is a dead copy), and edits at the
attention hooks have the effect the arithmetic says. On the bundled models and random
headwise/elementwise models with biases."""

from __future__ import annotations

import pytest
import torch
from helpers import PARITY_BUNDLED, RANDOM_WITH_BIASES, max_diff, random_tokens

MODELS = PARITY_BUNDLED + tuple(RANDOM_WITH_BIASES)
TOL = 1e-4


def _perturb(x, hook):
    if not x.is_floating_point():  # hook_tokens
        return (x + 1) % hook.ctx.setdefault("vocab", 2)
    return x * 1.5 + 0.05


@pytest.mark.parametrize(
    "kind, fork",
    [(kind, "set_use_split_qkv_input") for kind in MODELS]
    + [("gate_elementwise", "set_use_attn_in"), ("random_headwise", "set_use_attn_in")],
)
@torch.no_grad()
def test_every_hook_edit_reaches_the_logits(load_parity, kind, fork):
    model = load_parity(kind)
    model.set_use_attn_result(True)
    model.set_use_hook_mlp_in(True)
    model.set_use_hook_tokens(True)
    getattr(model, fork)(True)
    tokens = random_tokens(model, batch=1, pos=4)
    plain = model(tokens)
    model.hook_dict["hook_tokens"].ctx["vocab"] = model.cfg.d_vocab
    skip = "hook_attn_in" if fork == "set_use_split_qkv_input" else "_input"
    for name in model.hook_dict:
        if name.endswith(skip):
            continue  # the other fork does not fire
        if ".ln1." in name:
            # ln1 normalises each head's copy; its own hooks only observe, so an edit is refused
            with pytest.raises(ValueError, match="hook_q_input"):
                model.run_with_hooks(tokens, fwd_hooks=[(name, _perturb)])
            continue
        edited = model.run_with_hooks(tokens, fwd_hooks=[(name, _perturb)])
        assert max_diff(edited, plain) > 1e-5, f"editing {name} changed nothing"
    _, cache = model.run_with_cache(tokens)  # observing ln1 is fine
    assert "blocks.0.ln1.hook_scale" in cache.keys()
    getattr(model, fork)(False)  # without split inputs every hook, ln1's included, is live
    for name in [n for n in model.hook_dict if ".ln1." in n or "tokens" in n]:
        edited = model.run_with_hooks(tokens, fwd_hooks=[(name, _perturb)])
        assert max_diff(edited, plain) > 1e-5, f"editing {name} changed nothing"


@pytest.mark.parametrize("kind", [k for k in MODELS if k != "baseline"])
@torch.no_grad()
def test_gate_edit_scales_z(load_parity, kind):
    model = load_parity(kind)
    tokens = random_tokens(model)

    def half(gate, hook):
        return torch.full_like(gate, 0.5)

    with model.hooks(fwd_hooks=[("blocks.1.attn.hook_gate", half)]):
        _, cache = model.run_with_cache(tokens)
    assert max_diff(cache["z", 1], 0.5 * cache["z_pre_gate", 1]) <= TOL
    # closing every gate of a layer removes its heads: attn_out is b_O alone
    with model.hooks(fwd_hooks=[("blocks.1.attn.hook_gate", lambda g, hook: torch.zeros_like(g))]):
        _, cache = model.run_with_cache(tokens)
    assert max_diff(cache["attn_out", 1], model.blocks[1].attn.b_O.expand_as(cache["attn_out", 1])) <= TOL


@pytest.mark.parametrize("kind", MODELS)
@torch.no_grad()
def test_score_and_pattern_edits(load_parity, kind):
    model = load_parity(kind)
    tokens = random_tokens(model)
    plain = model(tokens)
    # softmax ignores a constant added to every score
    shifted = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_attn_scores", lambda s, hook: s + 7.0)])
    assert max_diff(shifted, plain) <= TOL
    # a uniform causal pattern makes z the running mean of the values (times the gate)
    n = tokens.shape[1]
    uniform = torch.ones(n, n).tril()
    uniform = uniform / uniform.sum(-1, keepdim=True)

    def flatten(pattern, hook):
        return uniform.expand_as(pattern).clone()

    with model.hooks(fwd_hooks=[("blocks.0.attn.hook_pattern", flatten)]):
        _, cache = model.run_with_cache(tokens)
    v = cache["v", 0].repeat_interleave(model.cfg.n_groups, dim=2)  # [batch, pos, head, d_head]
    mean_v = torch.einsum("qk,bkhd->bqhd", uniform, v)
    gate = cache["gate", 0] if model.cfg.is_gated else 1.0
    assert max_diff(cache["z", 0], mean_v * gate) <= TOL


@pytest.mark.parametrize("kind", MODELS)
@torch.no_grad()
def test_norm_scale_and_result_edits(load_parity, kind):
    model = load_parity(kind)
    tokens = random_tokens(model)
    _, cache = model.run_with_cache(tokens)
    with model.hooks(fwd_hooks=[("blocks.0.ln1.hook_scale", lambda s, hook: 2 * s)]):
        _, doubled = model.run_with_cache(tokens)
    assert max_diff(doubled["blocks.0.ln1.hook_normalized"], cache["blocks.0.ln1.hook_normalized"] / 2) <= TOL
    # zeroing one head's z is zeroing its result
    model.set_use_attn_result(True)
    head = 2

    def zero_z(z, hook):
        z = z.clone()
        z[:, :, head] = 0
        return z

    def zero_result(r, hook):
        r = r.clone()
        r[:, :, head] = 0
        return r

    by_z = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_z", zero_z)])
    by_result = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_result", zero_result)])
    assert max_diff(by_z, by_result) <= TOL


@torch.no_grad()
def test_filters_pass_over_switched_off_hooks(load_parity):
    """`add_hook` / `add_caching_hooks` with a filter (TransformerLens' cache_all path) cache what
    fires and skip the hooks whose switch is off; split inputs do not stop them observing ln1."""
    model = load_parity("gate_headwise")
    model.set_use_split_qkv_input(True)
    tokens = random_tokens(model)
    _, expected = model.run_with_cache(tokens)
    cache = model.add_caching_hooks(names_filter=lambda name: True)
    model(tokens)
    model.reset_hooks()
    assert set(cache) == set(expected.keys()) and "blocks.0.ln1.hook_scale" in cache
    assert all(torch.equal(cache[name], expected[name]) for name in cache)
    seen = []
    model.add_hook(lambda name: name.endswith(("hook_result", "hook_q_input")), lambda x, hook: seen.append(hook.name))
    model(tokens)
    model.reset_hooks()
    assert seen == [f"blocks.{layer}.attn.hook_q_input" for layer in range(model.cfg.n_layers)]


def test_hook_name_filter_that_matches_nothing_warns():
    """A callable name filter on `run_with_hooks` / `hooks()` / `add_hook` that matches no hook that
    fires warns (TransformerLens silently adds nothing): one comparing with `get_act_name`'s alias
    of a gate hook, one whose hooks are switched off. One that matches stays silent."""
    import warnings

    from transformer_lens.utilities import get_act_name

    import gated_interp

    model = gated_interp.load_hooked("gate_headwise", size="tiny", progress=False)
    tokens = model.to_tokens("The cat sat")

    def zero(x, hook):
        return x * 0

    alias = get_act_name("gate", 0)
    with pytest.warns(UserWarning, match=r"blocks\.0\.attn\.hook_gate"):
        model.run_with_hooks(tokens, fwd_hooks=[(lambda name: name == alias, zero)])
    with pytest.warns(UserWarning, match=r"set_use_attn_result\(True\)"):
        model.run_with_hooks(tokens, fwd_hooks=[(lambda name: name.endswith("hook_result"), zero)])
    with pytest.warns(UserWarning, match=r"blocks\.0\.attn\.hook_gate"):
        model.add_hook(lambda name: name == alias, zero)
    model.reset_hooks()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        edited = model.run_with_hooks(tokens, fwd_hooks=[(lambda name: name.endswith("hook_gate"), zero)])
    assert not torch.allclose(edited, model(tokens))  # it did match and edit
