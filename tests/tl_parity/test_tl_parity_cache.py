"""TransformerLens cache and hook-name idioms give TransformerLens' answers: short keys for the
gate hooks, `get_act_name` names everywhere, `pos_slice` along each hook's own position axis,
`apply_slice_to_batch_dim`, `generic_activation_patch` over the gate, direct path patching and the
logit lens. On the bundled models and on random headwise/elementwise models with biases; every
reference is computed by hand (explicit hooks and tensor indexing), not by the code under test."""

from __future__ import annotations

import pytest
import torch
from helpers import PARITY_BUNDLED, RANDOM_WITH_BIASES, max_diff, random_tokens
from transformer_lens import patching
from transformer_lens.utilities import get_act_name

from gated_interp import GatedActivationCache

MODELS = PARITY_BUNDLED + tuple(RANDOM_WITH_BIASES)
GATED = tuple(m for m in MODELS if m != "baseline")
TOL = 1e-4


@pytest.mark.parametrize("kind", GATED)
@torch.no_grad()
def test_gate_short_keys(load_parity, kind):
    model = load_parity(kind)
    _, cache = model.run_with_cache(random_tokens(model))
    assert isinstance(cache, GatedActivationCache)
    n = model.cfg.n_layers
    for short in ("gate", "gate_logits", "z_pre_gate", "q_normed", "k_normed"):
        full = cache[f"blocks.1.attn.hook_{short}"]
        assert cache[short, 1] is full and cache[short, 1 - n] is full
        assert cache[get_act_name(short, 1)] is full  # blocks.1.hook_<short>, as get_act_name spells it
        assert (short, 1) in cache and get_act_name(short, 1) in cache
    assert cache["gate1"] is cache["blocks.1.attn.hook_gate"]
    stacked = cache.stack_activation("gate")  # TransformerLens' per-layer stack, through the short key
    assert stacked.shape[0] == n and all(torch.equal(stacked[layer], cache["gate", layer]) for layer in range(n))
    assert cache["scale", 0, "ln1"] is cache["blocks.0.ln1.hook_scale"]
    with pytest.raises(KeyError, match="set_use_split_qkv_input"):
        cache["q_input", 0]


@torch.no_grad()
def test_baseline_says_it_has_no_gate(load_parity):
    model = load_parity("baseline")
    _, cache = model.run_with_cache(random_tokens(model))
    with pytest.raises(KeyError, match="gated-only"):
        cache["gate", 0]
    with pytest.raises(KeyError, match="only gated models"):
        model.run_with_hooks(random_tokens(model), fwd_hooks=[(get_act_name("gate", 0), lambda x, hook: x)])


@pytest.mark.parametrize("kind", MODELS)
@torch.no_grad()
def test_apply_slice_to_batch_dim_keeps_the_gated_cache(load_parity, kind):
    model = load_parity(kind)
    _, cache = model.run_with_cache(random_tokens(model, batch=3))
    one = cache.apply_slice_to_batch_dim(1)
    assert isinstance(one, GatedActivationCache) and not one.has_batch_dim
    assert torch.equal(one["z", 0], cache["z", 0][1])
    two = cache.apply_slice_to_batch_dim((0, 2))
    assert isinstance(two, GatedActivationCache) and two.has_batch_dim
    assert torch.equal(two["resid_post", 1], cache["resid_post", 1][:2])
    if model.cfg.is_gated:
        assert torch.equal(one["gate", 1], cache["gate", 1][1])


def _expected_pos_dim(name: str) -> int:
    """Where the (query) position axis is in the batched tensor, written out independently of the
    hook table: patterns and scores are [batch, head, q_pos, k_pos], everything else [batch, pos, ...]."""
    return 2 if name.endswith(("hook_pattern", "hook_attn_scores")) else 1


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("pos_slice", [-1, (1, 4), [0, 2, 5]])
@torch.no_grad()
def test_pos_slice_slices_positions_of_every_hook(load_parity, kind, pos_slice):
    model = load_parity(kind)
    model.set_use_attn_result(True)
    model.set_use_split_qkv_input(True)
    model.set_use_hook_tokens(True)
    model.set_use_hook_mlp_in(True)
    tokens = random_tokens(model)
    _, full = model.run_with_cache(tokens)
    _, sliced = model.run_with_cache(tokens, pos_slice=pos_slice)
    # TransformerLens turns an int into a one-element list, so the position axis stays
    index = (
        slice(*pos_slice) if isinstance(pos_slice, tuple) else [pos_slice] if isinstance(pos_slice, int) else pos_slice
    )
    assert set(sliced.keys()) == set(full.keys())
    for name, value in full.items():
        dim = _expected_pos_dim(name)
        expected = value[(slice(None),) * dim + (index,)]
        assert torch.equal(sliced[name], expected), name
    # every head kept (TransformerLens' own rule would have sliced the head axis of these)
    h = model.cfg.n_heads
    for short in ("q_normed", "rot_q", "z") + (("gate", "gate_logits", "z_pre_gate") if model.cfg.is_gated else ()):
        assert sliced[short, 0].shape[2] == h, short


@pytest.mark.parametrize("kind", ["gate_headwise", "random_elementwise"])
@torch.no_grad()
def test_pos_slice_without_batch_dim(load_parity, kind):
    model = load_parity(kind)
    tokens = random_tokens(model, batch=1)
    _, full = model.run_with_cache(tokens, remove_batch_dim=True)
    _, sliced = model.run_with_cache(tokens, remove_batch_dim=True, pos_slice=(2, 5))
    for name, value in full.items():
        dim = _expected_pos_dim(name) - 1
        assert torch.equal(sliced[name], value[(slice(None),) * dim + (slice(2, 5),)]), name


@pytest.mark.parametrize("kind", GATED)
@torch.no_grad()
def test_get_act_name_in_run_with_hooks_hook_dict_and_names_filter(load_parity, kind):
    model = load_parity(kind)
    tokens = random_tokens(model)
    name = get_act_name("gate", 1)  # "blocks.1.hook_gate"
    assert model.hook_dict[name] is model.blocks[1].attn.hook_gate and name in model.hook_dict
    assert model.mod_dict[name] is model.blocks[1].attn.hook_gate

    def close(gate, hook):
        return torch.zeros_like(gate)

    by_alias = model.run_with_hooks(tokens, fwd_hooks=[(name, close)])
    by_name = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_gate", close)])
    plain = model(tokens)
    assert torch.equal(by_alias, by_name) and max_diff(by_alias, plain) > 1e-3
    with model.hooks(fwd_hooks=[(name, close)]):
        assert torch.equal(model(tokens), by_name)
    model.add_hook(name, close)
    assert torch.equal(model(tokens), by_name)
    model.reset_hooks()
    _, cache = model.run_with_cache(tokens, names_filter=[name, get_act_name("q_normed", 0)])
    assert set(cache.keys()) == {"blocks.1.attn.hook_gate", "blocks.0.attn.hook_q_normed"}
    _, cache = model.run_with_cache(tokens, names_filter=name)
    assert set(cache.keys()) == {"blocks.1.attn.hook_gate"}


@torch.no_grad()
def test_a_hook_whose_switch_is_off_is_refused(load_parity):
    model = load_parity("gate_headwise")
    tokens = random_tokens(model)
    for name, switch in [
        ("blocks.0.hook_mlp_in", "set_use_hook_mlp_in"),
        ("blocks.0.hook_q_input", "set_use_split_qkv_input"),
        ("blocks.0.attn.hook_attn_in", "set_use_attn_in"),
        ("hook_tokens", "set_use_hook_tokens"),
        ("blocks.0.attn.hook_result", "set_use_attn_result"),
    ]:
        with pytest.raises(ValueError, match=switch):
            model.run_with_hooks(tokens, fwd_hooks=[(name, lambda x, hook: x)])
        with pytest.raises(ValueError, match=switch):
            model.add_hook(name, lambda x, hook: x)


@pytest.mark.parametrize(
    "kind, per_position", [("gate_headwise", False), ("random_elementwise", True), ("random_headwise", True)]
)
@torch.no_grad()
def test_generic_activation_patch_sweeps_the_gate(load_parity, kind, per_position):
    model = load_parity(kind)
    clean = random_tokens(model, batch=2, pos=3, seed=1)
    corrupted = random_tokens(model, batch=2, pos=3, seed=2)
    _, clean_cache = model.run_with_cache(clean)
    answer = 3

    def metric(logits):
        return logits[:, -1, answer].mean()

    if per_position:
        setter, axes = patching.layer_pos_head_vector_patch_setter, ("layer", "pos", "head")
    else:
        setter, axes = patching.layer_head_vector_patch_setter, ("layer", "head")
    result = patching.generic_activation_patch(
        model, corrupted, clean_cache, metric, setter, "gate", index_axis_names=axes
    )
    cfg = model.cfg
    positions = [[0], [1], [2]] if per_position else [[0, 1, 2]]
    assert result.shape == ((cfg.n_layers, 3, cfg.n_heads) if per_position else (cfg.n_layers, cfg.n_heads))
    expected = torch.zeros(cfg.n_layers, len(positions), cfg.n_heads)
    for layer in range(cfg.n_layers):
        clean_gate = clean_cache[f"blocks.{layer}.attn.hook_gate"]
        for p, pos in enumerate(positions):
            for head in range(cfg.n_heads):

                def put(gate, hook, pos=pos, head=head, clean_gate=clean_gate):
                    gate = gate.clone()
                    gate[:, pos, head] = clean_gate[:, pos, head]
                    return gate

                logits = model.run_with_hooks(corrupted, fwd_hooks=[(f"blocks.{layer}.attn.hook_gate", put)])
                expected[layer, p, head] = metric(logits)
    assert max_diff(result, expected if per_position else expected[:, 0]) <= TOL
    assert result.std() > 0  # the gate matters somewhere


def _rms(x, w, eps):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


@pytest.mark.parametrize(
    "kind, component", [("gate_headwise", "q"), ("random_elementwise", "q"), ("random_mha_elementwise", "k"),
                        ("random_mha_elementwise", "v"), ("baseline", "q")],
)  # fmt: skip
@torch.no_grad()
def test_direct_path_patching(load_parity, kind, component):
    """TL's get_act_patch_direct_path against a by-hand edit: the source head's clean-minus-corrupted
    write reaches only head (l, h)'s query (and, for the query, that head's gate, which reads the
    same input) / key / value, through ln1 recomputed on the edited stream."""
    model = load_parity(kind)
    clean, corrupted = random_tokens(model, seed=3), random_tokens(model, seed=4)
    _, clean_cache = model.run_with_cache(clean)
    _, corrupted_cache = model.run_with_cache(corrupted)

    def metric(logits):
        return logits[:, -1].logsumexp(-1).mean()

    src_layer, src_head = 0, 1
    result = patching.get_act_patch_direct_path(
        model, corrupted, clean_cache, corrupted_cache, metric, src_layer, src_head, component, verbose=False
    )
    assert not model.cfg.use_split_qkv_input  # restored
    W_O = model.blocks[src_layer].attn.W_O[src_head]
    delta = (clean_cache["z", src_layer][:, :, src_head] - corrupted_cache["z", src_layer][:, :, src_head]) @ W_O
    expected = torch.zeros_like(result)
    for layer in range(src_layer + 1, model.cfg.n_layers):
        attn, ln1 = model.blocks[layer].attn, model.blocks[layer].ln1
        edited = _rms(corrupted_cache["resid_pre", layer] + delta, ln1.w, ln1.eps)
        for head in range(model.cfg.n_heads):
            hooks_ = []
            if component == "q":
                q = edited @ attn.W_Q[head] + attn.b_Q[head]
                hooks_.append((f"blocks.{layer}.attn.hook_q", _put(head, q)))
                if model.cfg.is_gated:
                    g = edited @ attn.W_G[head] + attn.b_G[head]
                    hooks_.append((f"blocks.{layer}.attn.hook_gate_logits", _put(head, g)))
            else:
                W, b = (attn._W_K, attn._b_K) if component == "k" else (attn._W_V, attn._b_V)
                hooks_.append((f"blocks.{layer}.attn.hook_{component}", _put(head, edited @ W[head] + b[head])))
            expected[layer, head] = metric(model.run_with_hooks(corrupted, fwd_hooks=hooks_))
    assert max_diff(result, expected) <= TOL
    assert (result[src_layer + 1 :] - metric(model(corrupted))).abs().max() > 1e-4  # the edits do something


def _put(head, value):
    def hook(x, hook):
        x = x.clone()
        x[:, :, head] = value
        return x

    return hook


@pytest.mark.parametrize("kind", ["gate_elementwise", "random_headwise"])
@pytest.mark.parametrize("fold_ln", [True, False])
@torch.no_grad()
def test_logit_lens(load_parity, kind, fold_ln):
    """TransformerLens 4.3's `cache.logit_lens()`: layer k's row is the unembedded, final-normed
    residual stream entering block k; the last row is the model's logits."""
    model = load_parity(kind, fold_ln=fold_ln)
    tokens = random_tokens(model)
    logits, cache = model.run_with_cache(tokens)
    values = cache.logit_lens().readout.values  # [n_layers + 1, batch, d_vocab], last position
    ln = model.ln_final
    expected = [_rms(cache["resid_pre", k], ln.w, ln.eps) @ model.W_U + model.b_U for k in range(model.cfg.n_layers)]
    expected = torch.stack([e[:, -1] for e in expected] + [logits[:, -1]])
    assert max_diff(values, expected) <= TOL
    top = cache.logit_lens(top_k=3).readout.top_ids  # [n_layers + 1, batch, 3]
    assert torch.equal(top, expected.topk(3, dim=-1).indices)


def test_pos_slice_applies_to_gradients_too(load_parity):
    model = load_parity("gate_headwise")
    tokens = random_tokens(model)

    def keep(name):
        return "gate" in name or "pattern" in name

    _, full = model.run_with_cache(tokens, return_type="loss", incl_bwd=True, names_filter=keep)
    _, sliced = model.run_with_cache(tokens, return_type="loss", incl_bwd=True, names_filter=keep, pos_slice=(1, 3))
    assert "blocks.0.attn.hook_gate_grad" in sliced.keys() and set(sliced.keys()) == set(full.keys())
    for name, value in full.items():
        dim = _expected_pos_dim(name.removesuffix("_grad"))
        assert torch.equal(sliced[name], value[(slice(None),) * dim + (slice(1, 3),)]), name


def test_names_filter_that_keeps_nothing_says_why(load_parity):
    """TransformerLens returns an empty cache silently; here the habits that keep nothing by
    accident warn (a callable comparing with `get_act_name`'s alias, a hook whose switch is off)
    or raise (a name that is no hook, such as the short cache key "gate0"). A filter that keeps
    something, or a plain miss, stays silent."""
    import warnings

    model = load_parity("gate_headwise")
    tokens = random_tokens(model)
    alias = get_act_name("gate", 0)  # blocks.0.hook_gate; the hook is blocks.0.attn.hook_gate
    with pytest.warns(UserWarning, match=r"blocks\.0\.attn\.hook_gate"):
        _, cache = model.run_with_cache(tokens, names_filter=lambda name: name == alias)
    assert len(cache) == 0
    with pytest.raises(KeyError, match=r"'gate0' is not a hook of this model: a hook name is a full name"):
        model.run_with_cache(tokens, names_filter="gate0")
    with pytest.warns(UserWarning, match=r"set_use_split_qkv_input\(True\)"):
        model.run_with_cache(tokens, names_filter=[get_act_name("q_input", 0)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, cache = model.run_with_cache(tokens, names_filter=[alias])
        assert list(cache.keys()) == ["blocks.0.attn.hook_gate"]
        _, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_gate"))
        assert len(cache) == model.cfg.n_layers
        _, cache = model.run_with_cache(tokens, names_filter=lambda name: False)
        assert len(cache) == 0


def test_a_filter_that_names_some_hooks_by_alias_warns_even_when_it_keeps_others(load_parity):
    """`lambda n: n in {get_act_name("gate", 0), "blocks.0.hook_resid_post"}` keeps the residual but
    not the gate (callables see the real `blocks.0.attn.hook_gate`): that warns, on every caching
    path. A filter that excludes (accepts names no model has) is not read as naming hooks."""
    import warnings

    model = load_parity("gate_headwise")
    tokens = random_tokens(model)
    alias = get_act_name("gate", 0)
    wanted = {alias, "blocks.0.hook_resid_post"}
    with pytest.warns(UserWarning, match=r"blocks\.0\.hook_gate \(the hook is blocks\.0\.attn\.hook_gate\)") as record:
        _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in wanted)
    assert list(cache.keys()) == ["blocks.0.hook_resid_post"]
    assert record[0].filename == __file__  # the warning names the user's line, not TransformerLens'
    with pytest.warns(UserWarning, match=r"blocks\.0\.attn\.hook_gate") as record:
        with model.hooks(fwd_hooks=[(lambda name: name in wanted, lambda x, hook: x)]):
            pass
    assert record[0].filename == __file__
    with pytest.warns(UserWarning, match=r"blocks\.0\.attn\.hook_gate"):
        model.add_caching_hooks(names_filter=lambda name: name in wanted)
    model.reset_hooks()
    with pytest.warns(UserWarning, match=r"blocks\.0\.attn\.hook_gate"):
        model.run_with_hooks(tokens, fwd_hooks=[(lambda name: name in wanted, lambda x, hook: x)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, cache = model.run_with_cache(tokens, names_filter=lambda name: "attn" not in name)
        assert "blocks.0.hook_resid_post" in cache.keys() and "blocks.0.attn.hook_gate" not in cache.keys()


def test_add_caching_hooks_takes_the_names_run_with_cache_takes(load_parity):
    """TransformerLens' `add_caching_hooks` compares a list with the real names only, so
    `[get_act_name("gate", 0)]` would cache nothing; here it caches the gate, as run_with_cache
    does, and a name that is no hook is an error rather than an empty cache."""
    model = load_parity("gate_headwise")
    tokens = random_tokens(model)
    _, expected = model.run_with_cache(tokens, names_filter=["blocks.0.attn.hook_gate"])
    cache = model.add_caching_hooks(names_filter=[get_act_name("gate", 0)])
    model(tokens)
    model.reset_hooks()
    assert list(cache) == ["blocks.0.attn.hook_gate"]
    assert torch.equal(cache["blocks.0.attn.hook_gate"], expected["blocks.0.attn.hook_gate"])
    with pytest.raises(KeyError, match="gate0"):
        model.add_caching_hooks(names_filter=["gate0"])
