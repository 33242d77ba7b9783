"""TransformerLens compatibility: hook names and shapes, cache keys, ActivationCache methods,
`transformer_lens.patching`, weight properties, tokenisation and generation.

Tolerance: 1e-4 absolute in float32 wherever a quantity is rebuilt from cached pieces (sums of
per-head results, decompositions, logit attributions): the same sums in another order differ by
~1e-6 on O(1) values. Generation is compared token for token (exactly).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import make_tiny_with_tokenizer, max_diff
from transformer_lens import FactoredMatrix, patching

from gated_interp import GatedActivationCache, HookedGatedQwen3

TOL = 1e-4
B, P = 2, 7
PROMPT = "the little cat saw a dog"


@pytest.fixture
def tok_model(tmp_path, bpe_tokenizer, gate):
    """(model with tokenizer, config) for each gate kind: GQA 4 heads / 2 kv heads, d_head 16, biases."""
    model, config, _ = make_tiny_with_tokenizer(
        tmp_path / f"tok_{gate}", bpe_tokenizer, gate=gate, seed=21, qkv_bias=True, num_hidden_layers=2
    )
    return model, config


def _with_attn_result(model: HookedGatedQwen3) -> HookedGatedQwen3:
    """The same weights in a model built with cfg.use_attn_result=True."""
    cfg = dataclasses.replace(model.cfg, use_attn_result=True, hf_extra=dict(model.cfg.hf_extra))
    other = HookedGatedQwen3(cfg, tokenizer=model.tokenizer)
    other.load_state_dict(model.state_dict())
    return other


def _tokens(config, seed=0):
    # ids >= 2 so that no BOS/PAD special token is drawn
    return torch.randint(2, config["vocab_size"], (B, P), generator=torch.Generator().manual_seed(seed))


# ---- hooks and cache ---------------------------------------------------------------------------


@torch.no_grad()
def test_hook_names_and_shapes(tok_model, gate):
    model, config = tok_model
    m, h, kv, d, f = (
        config[k]
        for k in ("hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size")
    )
    g = {"none": 0, "headwise": 1, "elementwise": d}[gate]
    _, cache = model.run_with_cache(_tokens(config))
    assert isinstance(cache, GatedActivationCache)
    expected = {"hook_embed": (B, P, m), "ln_final.hook_scale": (B, P, 1), "ln_final.hook_normalized": (B, P, m)}
    for layer in range(config["num_hidden_layers"]):
        c = f"blocks.{layer}."
        for name in ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post"):
            expected[c + name] = (B, P, m)
        for ln in ("ln1", "ln2"):
            expected[f"{c}{ln}.hook_scale"] = (B, P, 1)
            expected[f"{c}{ln}.hook_normalized"] = (B, P, m)
        for name, shape in {
            "hook_q": (B, P, h, d),
            "hook_k": (B, P, kv, d),
            "hook_v": (B, P, kv, d),
            "hook_q_normed": (B, P, h, d),
            "hook_k_normed": (B, P, kv, d),
            "hook_rot_q": (B, P, h, d),
            "hook_rot_k": (B, P, kv, d),
            "hook_attn_scores": (B, h, P, P),
            "hook_pattern": (B, h, P, P),
            "hook_z": (B, P, h, d),
        }.items():
            expected[c + "attn." + name] = shape
        if gate != "none":
            expected[c + "attn.hook_z_pre_gate"] = (B, P, h, d)
            expected[c + "attn.hook_gate_logits"] = (B, P, h, g)
            expected[c + "attn.hook_gate"] = (B, P, h, g)
        for name in ("hook_pre", "hook_pre_linear", "hook_post"):
            expected[c + "mlp." + name] = (B, P, f)
    assert set(cache.keys()) == set(expected)  # nothing missing, nothing extra (no gate hooks in baseline)
    for name, shape in expected.items():
        assert tuple(cache[name].shape) == shape, name
    # hook_result, the split inputs, hook_mlp_in and hook_tokens exist on every model but only
    # fire after their set_use_* switch (TransformerLens' use_attn_result, use_split_qkv_input, ...)
    switched = {"hook_tokens"}
    for layer in range(config["num_hidden_layers"]):
        switched |= {f"blocks.{layer}.attn.hook_{n}" for n in ("result", "q_input", "k_input", "v_input", "attn_in")}
        switched.add(f"blocks.{layer}.hook_mlp_in")
    assert set(model.hook_dict) == set(expected) | switched

    pattern = cache["pattern", 0]
    assert torch.allclose(pattern.sum(-1), torch.ones(B, h, P), atol=1e-5)
    assert torch.all(pattern.triu(1) == 0)  # causal


@torch.no_grad()
def test_hook_result_when_use_attn_result(tok_model):
    model, config = tok_model
    tokens = _tokens(config)
    _, cache = model.run_with_cache(tokens)
    assert "blocks.0.attn.hook_result" not in cache.keys()
    plain_logits = model(tokens)
    switched_on = HookedGatedQwen3(dataclasses.replace(model.cfg, hf_extra={}), tokenizer=model.tokenizer)
    switched_on.load_state_dict(model.state_dict())
    switched_on.set_use_attn_result(True)  # on a model built without it
    for other in (_with_attn_result(model), switched_on):
        logits, cache = other.run_with_cache(tokens)
        assert torch.allclose(logits, plain_logits, atol=1e-5)
        for layer in range(config["num_hidden_layers"]):
            result = cache["result", layer]
            assert result.shape == (B, P, config["num_attention_heads"], config["hidden_size"])
            assert max_diff(result.sum(-2) + other.blocks[layer].attn.b_O, cache["attn_out", layer]) <= TOL


@torch.no_grad()
def test_short_cache_keys(tok_model, gate):
    model, config = tok_model
    _, cache = model.run_with_cache(_tokens(config))
    n = config["num_hidden_layers"]
    assert cache["z", 1] is cache["blocks.1.attn.hook_z"]
    assert cache["pattern", 0] is cache["blocks.0.attn.hook_pattern"]
    assert cache["z", -1] is cache[f"blocks.{n - 1}.attn.hook_z"]
    assert cache["q_normed", 0] is cache["blocks.0.attn.hook_q_normed"]
    if gate == "none":
        with pytest.raises(KeyError):
            cache["gate", 0]
        return
    for short in ("gate", "gate_logits", "z_pre_gate"):
        assert cache[short, 0] is cache[f"blocks.0.attn.hook_{short}"]
        assert cache[short, -1] is cache[f"blocks.{n - 1}.attn.hook_{short}"]
    assert torch.equal(cache["gate", 1], torch.sigmoid(cache["gate_logits", 1]))
    assert torch.allclose(cache["z", 1], cache["z_pre_gate", 1] * cache["gate", 1])
    with pytest.raises(KeyError):
        cache[("gate",)]


# ---- ActivationCache methods -------------------------------------------------------------------


@torch.no_grad()
def test_stack_head_results_sum_to_attn_out(tok_model):
    model, config = tok_model
    _, cache = model.run_with_cache(_tokens(config))
    h, n = config["num_attention_heads"], config["num_hidden_layers"]
    stack, labels = cache.stack_head_results(layer=-1, return_labels=True)
    assert stack.shape == (n * h, B, P, config["hidden_size"])
    assert labels[:2] == ["L0H0", "L0H1"]
    for layer in range(n):
        heads = stack[layer * h : (layer + 1) * h].sum(0) + model.blocks[layer].attn.b_O
        assert max_diff(heads, cache["attn_out", layer]) <= TOL


@torch.no_grad()
def test_decompose_and_accumulated_resid(tok_model):
    model, config = tok_model
    tokens = _tokens(config)
    logits, cache = model.run_with_cache(tokens)
    n = config["num_hidden_layers"]
    final = cache["resid_post", n - 1]

    parts, labels = cache.decompose_resid(apply_ln=False, return_labels=True)
    assert labels == ["embed"] + [f"{i}_{k}" for i in range(n) for k in ("attn_out", "mlp_out")]
    assert max_diff(parts.sum(0), final) <= TOL

    acc, acc_labels = cache.accumulated_resid(return_labels=True)
    assert acc.shape == (n + 1, B, P, config["hidden_size"])
    assert acc_labels[-1] == "final_post"
    for layer in range(n):
        assert torch.equal(acc[layer], cache["resid_pre", layer])
    assert torch.equal(acc[-1], final)
    # with the final norm: the last entry is ln_final's output, i.e. what the unembedding reads
    acc_ln = cache.accumulated_resid(apply_ln=True)
    assert max_diff(acc_ln[-1] @ model.W_U, logits) <= TOL

    # apply_ln_to_stack divides by ln_final's cached scale (no weight)
    normed = cache.apply_ln_to_stack(final[None], layer=-1)[0]
    assert max_diff(normed, cache["ln_final.hook_normalized"]) <= TOL
    normed_mid = cache.apply_ln_to_stack(cache["resid_mid", 1][None], layer=1, mlp_input=True)[0]
    assert max_diff(normed_mid, cache["blocks.1.ln2.hook_normalized"]) <= TOL


@torch.no_grad()
def test_logit_attrs_sum_to_logit(tok_model):
    model, config = tok_model
    tokens = _tokens(config)
    logits, cache = model.run_with_cache(tokens)
    answer = tokens[:, -1]  # any token per sequence
    expected = logits[torch.arange(B), -1, answer]  # no unembedding bias to add
    # This TransformerLens version's logit_attrs divides the stack by ln_final's cached scale itself,
    # so it takes the unscaled decomposition (apply_ln=False).
    raw = cache.decompose_resid(apply_ln=False, pos_slice=-1)
    attrs = cache.logit_attrs(raw, answer, pos_slice=-1)
    assert attrs.shape == (raw.shape[0], B)
    assert max_diff(attrs.sum(0), expected) <= TOL
    # The pre-scaled decomposition (apply_ln=True) dotted with tokens_to_residual_directions
    # (W_U columns with ln_final.w folded in) gives the same logit.
    scaled = cache.decompose_resid(apply_ln=True, pos_slice=-1)
    directions = model.tokens_to_residual_directions(answer)
    assert directions.shape == (B, config["hidden_size"])
    assert max_diff((scaled * directions).sum(-1).sum(0), expected) <= TOL
    assert torch.equal(model.tokens_to_residual_directions(int(answer[0])), directions[0])
    # logit difference form
    wrong = tokens[:, 0]
    diff = cache.logit_attrs(raw, answer, incorrect_tokens=wrong, pos_slice=-1).sum(0)
    assert max_diff(diff, expected - logits[torch.arange(B), -1, wrong]) <= TOL


# ---- patching ----------------------------------------------------------------------------------


@torch.no_grad()
def test_transformer_lens_patching_runs(tok_model):
    model, config = tok_model
    clean = _tokens(config, seed=1)
    corrupted = clean.clone()
    corrupted[:, 2] = _tokens(config, seed=2)[:, 2]  # the runs differ at position 2 only
    assert not torch.equal(corrupted, clean)
    answer = clean[:, -1]

    def metric(logits):
        return logits[torch.arange(B), -2, answer].mean()

    clean_logits, clean_cache = model.run_with_cache(clean)
    corrupted_logits = model(corrupted)
    clean_value = metric(clean_logits).item()
    n, h = config["num_hidden_layers"], config["num_attention_heads"]

    resid = patching.get_act_patch_resid_pre(model, corrupted, clean_cache, metric)
    assert resid.shape == (n, P)
    # patching layer 0's clean residual at the one differing position makes the whole run clean
    assert abs(resid[0, 2].item() - clean_value) <= 1e-5
    # patching at a position the runs share, or after the metric's position, changes nothing
    corrupted_value = metric(corrupted_logits).item()
    assert abs(resid[0, 0].item() - corrupted_value) <= 1e-5
    assert abs(resid[1, -1].item() - corrupted_value) <= 1e-5
    assert abs(clean_value - corrupted_value) > 1e-4  # the corruption matters
    heads = patching.get_act_patch_attn_head_out_all_pos(model, corrupted, clean_cache, metric)
    assert heads.shape == (n, h)
    assert torch.isfinite(heads).all() and torch.isfinite(resid).all()

    # clean into clean: every patch leaves the clean metric unchanged
    same_resid = patching.get_act_patch_resid_pre(model, clean, clean_cache, metric)
    same_heads = patching.get_act_patch_attn_head_out_all_pos(model, clean, clean_cache, metric)
    assert torch.allclose(same_resid, torch.full_like(same_resid, clean_value), atol=1e-5)
    assert torch.allclose(same_heads, torch.full_like(same_heads, clean_value), atol=1e-5)


# ---- weights -----------------------------------------------------------------------------------


def test_weight_properties(tok_model, gate):
    model, config = tok_model
    m, h, kv, d, n = (
        config[k]
        for k in ("hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim", "num_hidden_layers")
    )
    groups = h // kv
    attn = model.blocks[0].attn
    assert attn.W_Q.shape == (h, m, d)
    assert attn.W_K.shape == attn.W_V.shape == (h, m, d)
    assert torch.equal(attn.W_K, attn._W_K.repeat_interleave(groups, dim=0))
    assert torch.equal(attn.W_V, attn._W_V.repeat_interleave(groups, dim=0))
    assert torch.equal(attn.b_K, attn._b_K.repeat_interleave(groups, dim=0))
    assert attn.W_O.shape == (h, d, m)
    assert model.W_Q.shape == (n, h, m, d)
    assert model.W_K.shape == model.W_V.shape == (n, h, m, d)
    assert model.W_O.shape == (n, h, d, m)
    assert torch.equal(model.W_Q[1], model.blocks[1].attn.W_Q)
    assert model.W_E.shape == (config["vocab_size"], m) and model.W_U.shape == (m, config["vocab_size"])
    if gate == "none":
        assert not hasattr(attn, "W_G")
        with pytest.raises(AttributeError):
            _ = model.W_G
    else:
        g = 1 if gate == "headwise" else d
        assert attn.W_G.shape == (h, m, g)
        assert model.W_G.shape == (n, h, m, g)
    ov = attn.OV
    assert isinstance(ov, FactoredMatrix)
    assert torch.allclose(ov.AB, attn.W_V @ attn.W_O, atol=1e-6)
    assert isinstance(model.OV, FactoredMatrix)
    assert torch.allclose(model.OV.AB, model.W_V @ model.W_O, atol=1e-6)
    assert torch.allclose(model.QK.AB, model.W_Q @ model.W_K.transpose(-2, -1), atol=1e-6)


# ---- tokenisation ------------------------------------------------------------------------------


def test_tokenisation_helpers(tok_model, bpe_tokenizer):
    model, _ = tok_model
    tokens = model.to_tokens(PROMPT)
    assert tokens.shape[0] == 1 and tokens[0, 0].item() == bpe_tokenizer.bos_token_id
    assert tokens[0, 1:].tolist() == bpe_tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    assert model.to_tokens(PROMPT, prepend_bos=False)[0].tolist() == tokens[0, 1:].tolist()
    str_tokens = model.to_str_tokens(PROMPT)
    assert str_tokens[0] == bpe_tokenizer.bos_token
    assert "".join(str_tokens[1:]) == PROMPT
    assert model.to_str_tokens(tokens) == str_tokens
    assert model.to_string(tokens[0, 1:]) == PROMPT
    assert model.to_string(tokens[:, 1:]) == [PROMPT]
    first = int(tokens[0, 1])
    assert model.to_single_token(model.to_string([first])) == first
    with pytest.raises(ValueError):
        model.to_single_token(PROMPT)
    # batches are right-padded with the pad token; the string forward masks the padding
    batch = model.to_tokens([PROMPT, "the"])
    assert batch.shape[0] == 2 and batch[1, -1].item() == bpe_tokenizer.pad_token_id
    with torch.no_grad():
        both = model([PROMPT, "the"])
        alone = model("the")
    assert max_diff(both[1, : alone.shape[1]], alone[0]) <= TOL
    assert max_diff(model(PROMPT), model(tokens)) == 0
    same, mask = model.to_tokens([PROMPT, "the"], return_attention_mask=True)
    assert torch.equal(same, batch)
    assert mask[0].all() and mask[1].sum().item() == alone.shape[1] and mask[1, -1].item() == 0
    with torch.no_grad():
        assert max_diff(model(batch, attention_mask=mask), both) == 0


# ---- generation --------------------------------------------------------------------------------


def test_greedy_generation_with_and_without_kv_cache(tok_model):
    model, _ = tok_model
    tokens = model.to_tokens(PROMPT)
    kwargs = dict(max_new_tokens=8, do_sample=False, stop_at_eos=False, verbose=False)
    with_cache = model.generate(tokens, use_past_kv_cache=True, **kwargs)
    without = model.generate(tokens, use_past_kv_cache=False, **kwargs)
    assert with_cache.shape == (1, tokens.shape[1] + 8)
    assert torch.equal(with_cache, without)
    assert torch.equal(with_cache[:, : tokens.shape[1]], tokens)
    # each generated token is the argmax of a plain forward over what precedes it
    with torch.no_grad():
        logits = model(with_cache[:, :-1])
    assert torch.equal(logits[0, tokens.shape[1] - 1 :].argmax(-1), with_cache[0, tokens.shape[1] :])
    text = model.generate(PROMPT, **kwargs)
    # the prepended BOS is a special token, not part of the returned text
    assert isinstance(text, str) and text.startswith(PROMPT) and model.tokenizer.bos_token not in text


def test_sampling_with_seed_is_reproducible(tok_model):
    model, _ = tok_model
    tokens = model.to_tokens(PROMPT)
    kwargs = dict(max_new_tokens=10, do_sample=True, temperature=1.5, stop_at_eos=False, verbose=False)
    a = model.generate(tokens, seed=123, **kwargs)
    b = model.generate(tokens, seed=123, **kwargs)
    assert torch.equal(a, b)
    others = [model.generate(tokens, seed=s, **kwargs) for s in (1, 2, 3)]
    assert any(not torch.equal(a, o) for o in others)  # the seed matters (a tiny random model is noisy)
    top_k = model.generate(tokens, seed=5, top_k=1, **kwargs)
    greedy = model.generate(tokens, max_new_tokens=10, do_sample=False, stop_at_eos=False, verbose=False)
    assert torch.equal(top_k, greedy)


def test_batched_generation_matches_each_prompt_alone(tok_model):
    model, _ = tok_model
    prompts = [PROMPT, "the", "a big king went to the river"]
    kwargs = dict(max_new_tokens=6, do_sample=False, stop_at_eos=False, verbose=False, return_type="tokens")
    batched = model.generate(prompts, **kwargs)
    for row, prompt in enumerate(prompts):
        alone = model.generate(prompt, **kwargs)[0]
        # the batch is left-padded: the row ends with this prompt's tokens and its continuation
        assert torch.equal(batched[row, -alone.shape[0] :], alone), prompt
    texts = model.generate(prompts, max_new_tokens=6, do_sample=False, stop_at_eos=False, verbose=False)
    assert [t.startswith(p) for t, p in zip(texts, prompts)] == [True] * 3


# ---- hooks ---------------------------------------------------------------------------------------


@torch.no_grad()
def test_zeroing_the_gate_changes_a_gated_model(tok_model, gate):
    model, config = tok_model
    tokens = _tokens(config)
    clean = model(tokens)
    if gate == "none":
        assert not any("hook_gate" in name for name in model.hook_dict)
        return

    def zero(t, hook):
        return torch.zeros_like(t)

    zeroed = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_gate", zero)])
    assert max_diff(zeroed, clean) > 1e-3
    # all gates shut: attention contributes only b_O, so z is zero everywhere
    seen = {}
    model.run_with_hooks(
        tokens,
        fwd_hooks=[
            (lambda n: n.endswith("hook_gate"), zero),
            (lambda n: n.endswith("hook_z"), lambda t, hook: seen.setdefault(hook.name, t)),
        ],
    )
    assert all(torch.all(z == 0) for z in seen.values()) and len(seen) == config["num_hidden_layers"]
    # hooks are removed afterwards
    assert torch.equal(model(tokens), clean)

    with model.hooks(fwd_hooks=[("blocks.1.attn.hook_gate", zero)]):
        inside = model(tokens)
    assert max_diff(inside, clean) > 1e-3
    assert max_diff(inside, model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_gate", zero)])) == 0
    assert torch.equal(model(tokens), clean)
