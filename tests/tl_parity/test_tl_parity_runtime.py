"""TransformerLens runtime idioms give TransformerLens' answers: the `set_use_*` switches and their
hooks, padding sides and the loss on padded batches, `return_type="both"`, the token helpers,
`generate`'s options, `evals.induction_loss` and the config fields TransformerLens code reads.
On the bundled models and on random headwise/elementwise models with biases."""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import (
    PARITY_BUNDLED,
    RANDOM_WITH_BIASES,
    make_tiny,
    max_diff,
    random_tokens,
    without_shape_checks,
)
from transformer_lens import evals

from gated_interp import GatedQwen3Config
from gated_interp.model import Output

MODELS = PARITY_BUNDLED + tuple(RANDOM_WITH_BIASES)
TOL = 1e-4
PROMPTS = ["the little girl went to the garden", "a dog ran"]


def _nll(logits, tokens):
    """Per-token next-token NLL written out by hand, [batch, pos - 1]."""
    log_probs = logits.float().log_softmax(-1)[:, :-1]
    return -log_probs.gather(-1, tokens[:, 1:, None])[..., 0]


# ---- switches ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("switch", ["set_use_split_qkv_input", "set_use_attn_in"])
@torch.no_grad()
def test_split_inputs_compute_the_same_function(load_parity, kind, switch):
    model = load_parity(kind)
    tokens = random_tokens(model)
    logits, cache = model.run_with_cache(tokens)
    getattr(model, switch)(True)
    split_logits, split_cache = model.run_with_cache(tokens)
    assert max_diff(split_logits, logits) <= TOL
    for name in cache.keys():
        assert max_diff(split_cache[name], cache[name]) <= TOL, name
    cfg = model.cfg
    for layer in range(cfg.n_layers):
        resid = split_cache["resid_pre", layer]
        if switch == "set_use_split_qkv_input":
            assert torch.equal(split_cache["q_input", layer], resid[:, :, None].expand(-1, -1, cfg.n_heads, -1))
            assert split_cache["blocks.0.hook_k_input"].shape[2] == cfg.n_key_value_heads  # TL 2.x name
            assert torch.equal(
                split_cache["v_input", layer], resid[:, :, None].expand(-1, -1, cfg.n_key_value_heads, -1)
            )
        else:
            assert torch.equal(split_cache["attn_in", layer], resid[:, :, None].expand(-1, -1, cfg.n_heads, -1))


@pytest.mark.parametrize("kind", ["gate_headwise", "random_elementwise"])
@torch.no_grad()
def test_editing_one_heads_query_input_moves_only_that_head(load_parity, kind):
    model = load_parity(kind)
    model.set_use_split_qkv_input(True)
    tokens = random_tokens(model)
    _, cache = model.run_with_cache(tokens)
    head = 1

    def shift(x, hook):
        x = x.clone()
        x[:, :, head] += 3.0
        return x

    model.add_hook("blocks.1.hook_q_input", shift)  # TL 2.x's name resolves too
    _, edited = model.run_with_cache(tokens)
    model.reset_hooks()
    others = [h for h in range(model.cfg.n_heads) if h != head]
    assert torch.equal(edited["q", 1][:, :, others], cache["q", 1][:, :, others])
    assert max_diff(edited["q", 1][:, :, head], cache["q", 1][:, :, head]) > 1e-3
    assert torch.equal(edited["k", 1], cache["k", 1]) and torch.equal(edited["v", 1], cache["v", 1])
    if model.cfg.is_gated:  # the gate reads the query's input
        assert torch.equal(edited["gate_logits", 1][:, :, others], cache["gate_logits", 1][:, :, others])
        assert max_diff(edited["gate_logits", 1][:, :, head], cache["gate_logits", 1][:, :, head]) > 1e-4


@pytest.mark.parametrize("kind", MODELS)
@torch.no_grad()
def test_hook_mlp_in_and_hook_tokens(load_parity, kind):
    model = load_parity(kind)
    tokens = random_tokens(model)
    logits, cache = model.run_with_cache(tokens)
    model.set_use_hook_mlp_in(True)
    model.set_use_hook_tokens(True)
    switched_logits, switched = model.run_with_cache(tokens)
    assert torch.equal(switched_logits, logits)
    assert torch.equal(switched["hook_tokens"], tokens)
    for layer in range(model.cfg.n_layers):
        assert torch.equal(switched["mlp_in", layer], cache["resid_mid", layer])

    # an edit of hook_mlp_in reaches the MLP only, not the residual stream it was copied from
    def zero(x, hook):
        return torch.zeros_like(x)

    with model.hooks(fwd_hooks=[("blocks.0.hook_mlp_in", zero)]):
        _, edited = model.run_with_cache(tokens)
    assert torch.equal(edited["resid_mid", 0], cache["resid_mid", 0])
    assert max_diff(edited["mlp_out", 0], torch.zeros_like(cache["mlp_out", 0]) + model.blocks[0].mlp.b_out) <= TOL


def test_switches_that_cannot_hold_raise(load_parity):
    model = load_parity("gate_headwise")
    model.set_use_split_qkv_input(True)
    with pytest.raises(ValueError, match="set_use_split_qkv_input\\(False\\)"):
        model.set_use_attn_in(True)
    with pytest.raises(ValueError, match="W_K"):
        model.set_ungroup_grouped_query_attention(True)
    with pytest.raises(ValueError, match="one device"):
        GatedQwen3Config(32, 1, 2, 8, 16, 11, n_devices=2, device="cpu")


def test_config_fields_transformer_lens_reads(load_parity):
    cfg = load_parity("gate_headwise").cfg
    assert cfg.d_vocab_out == cfg.d_vocab and cfg.eps == cfg.rms_norm_eps
    assert cfg.rotary_base == cfg.rope_theta and cfg.rotary_dim == cfg.d_head
    assert cfg.positional_embedding_type == "rotary" and cfg.normalization_type == "RMSPre"
    assert cfg.n_devices == 1 and cfg.default_padding_side == "right"
    assert cfg.default_prepend_bos is True and cfg.tokenizer_prepends_bos is False
    assert not (cfg.use_split_qkv_input or cfg.use_attn_in or cfg.use_hook_mlp_in or cfg.use_hook_tokens)
    assert cfg.ungroup_grouped_query_attention is False and cfg.is_gated


# ---- padding and the loss ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", PARITY_BUNDLED)
@torch.no_grad()
def test_padding_sides(load_parity, kind):
    model = load_parity(kind)
    pad = model.tokenizer.pad_token_id
    singles = [model.to_tokens(p)[0] for p in PROMPTS]
    right, right_mask = model.to_tokens(PROMPTS, return_attention_mask=True)
    left, left_mask = model.to_tokens(PROMPTS, padding_side="left", return_attention_mask=True)
    n = len(singles[1])
    assert torch.equal(right[1, :n], singles[1]) and (right[1, n:] == pad).all() and right_mask[1].sum() == n
    assert torch.equal(left[1, -n:], singles[1]) and (left[1, :-n] == pad).all() and left_mask[1].sum() == n
    # a left-padded tensor without a mask gets the one TransformerLens derives from the pads
    derived = model(left, padding_side="left")
    explicit = model(left, attention_mask=left_mask)
    assert torch.equal(derived, explicit)
    for row, single in enumerate(singles):
        alone = model(single[None])[0, -1]
        assert max_diff(derived[row, -1], alone) <= TOL
        assert max_diff(model(PROMPTS, padding_side="left")[row, -1], alone) <= TOL
    # set_tokenizer's default_padding_side, as in TransformerLens
    model.set_tokenizer(model.tokenizer, default_padding_side="left")
    assert torch.equal(model.to_tokens(PROMPTS), left) and torch.equal(model(left), explicit)
    with pytest.raises(ValueError, match="padding_side"), without_shape_checks():
        model.to_tokens(PROMPTS, padding_side="middle")


@pytest.mark.parametrize("kind", PARITY_BUNDLED)
@torch.no_grad()
def test_loss_on_padded_batches(load_parity, kind):
    model = load_parity(kind)
    tokens, mask = model.to_tokens(PROMPTS, return_attention_mask=True)
    logits = model(tokens, attention_mask=mask)
    nll = _nll(logits, tokens)
    counted = (mask[:, 1:] * mask[:, :-1]).bool()
    per_token = model.loss_fn(logits, tokens, attention_mask=mask, per_token=True)
    assert max_diff(per_token, torch.where(counted, nll, 0.0)) <= TOL  # padded positions are zero
    masked_mean = nll[counted].mean()
    assert max_diff(model(tokens, return_type="loss", attention_mask=mask), masked_mean) <= TOL
    assert max_diff(model(PROMPTS, return_type="loss"), masked_mean) <= TOL  # strings carry their mask
    # a right-padded tensor without a mask: TransformerLens counts the padding; we do too, and say so
    with pytest.warns(UserWarning, match="attention_mask"):
        unmasked = model(tokens, return_type="loss")
    assert max_diff(unmasked, _nll(model(tokens), tokens).mean()) <= TOL
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(model.to_tokens(PROMPTS[0]), return_type="loss")  # nothing padded: no warning
    # left padding: the mask is derived, so the loss leaves padding out without being asked
    left, left_mask = model.to_tokens(PROMPTS, padding_side="left", return_attention_mask=True)
    assert max_diff(model(left, return_type="loss", padding_side="left"), masked_mean) <= TOL


@pytest.mark.parametrize("kind", MODELS)
@torch.no_grad()
def test_return_type_both_is_tl_output(load_parity, kind):
    model = load_parity(kind)
    tokens = random_tokens(model)
    out = model(tokens, return_type="both")
    assert isinstance(out, Output) and isinstance(out, tuple)
    logits, loss = out
    assert torch.equal(out.logits, model(tokens)) and torch.equal(out.loss, model(tokens, return_type="loss"))
    assert max_diff(loss, _nll(logits, tokens).mean()) <= TOL
    per_token = model(tokens, return_type="both", loss_per_token=True).loss
    assert max_diff(per_token, _nll(logits, tokens)) <= TOL


# ---- tokens --------------------------------------------------------------------------------------


def test_truncate_and_move_to_device(load_parity):
    model = load_parity("baseline")
    long_text = "the cat " * model.cfg.n_ctx
    with pytest.warns(UserWarning, match="n_ctx"):
        tokens = model.to_tokens(long_text)
    assert tokens.shape[1] == model.cfg.n_ctx
    whole = model.to_tokens(long_text, truncate=False)
    assert whole.shape[1] > model.cfg.n_ctx and torch.equal(whole[:, : model.cfg.n_ctx], tokens)
    assert model.to_tokens("hi", move_to_device=False).device.type == "cpu"


def test_token_helpers(load_parity):
    model = load_parity("gate_headwise")
    text = "a girl saw the cat and the bird"
    tokens = model.to_tokens(text)
    the = model.to_single_token(" the")
    assert model.get_token_position(" the", text) == int((tokens[0] == the).nonzero()[0])
    assert model.get_token_position(the, tokens, mode="last") == int((tokens[0] == the).nonzero()[-1])
    assert model.get_token_position(the, tokens[0], mode="first") == model.get_token_position(" the", text)
    assert model.get_token_position(" the", text, mode="last") > model.get_token_position(" the", text)
    with pytest.raises(ValueError, match="does not occur"):
        model.get_token_position(" dog", text)
    with pytest.raises(ValueError, match="'first' or 'last'"), without_shape_checks():
        model.get_token_position(the, text, mode="middle")
    assert model.to_single_str_token(the) == " the"
    with pytest.raises(TypeError, match="one int token id"), without_shape_checks():
        model.to_single_str_token(" the")
    as_lists = model.to_str_tokens(PROMPTS)
    assert as_lists == [model.to_str_tokens(p) for p in PROMPTS] and isinstance(as_lists[0], list)
    assert model.to_str_tokens(torch.tensor(the)) == [" the"]  # a 0-d tensor
    assert model.to_str_tokens(tokens) == model.to_str_tokens(tokens[0]) == model.to_str_tokens(text)


# ---- generate ------------------------------------------------------------------------------------


@torch.no_grad()
def test_generate_options(load_parity):
    model = load_parity("gate_headwise")
    greedy = model.generate("the little girl", max_new_tokens=6, do_sample=False, verbose=False)
    assert isinstance(greedy, str)
    assert model.generate(["the little girl"], max_new_tokens=6, do_sample=False, verbose=False) == greedy
    tokens = model.generate("the little girl", max_new_tokens=6, do_sample=False, return_type="tokens", verbose=False)
    new = tokens[0, -6:].tolist()
    # a list of EOS ids: the first generated token stops a second run, any other id in the list too
    stopped = model.generate(
        "the little girl", max_new_tokens=6, do_sample=False, eos_token_id=[new[0], 12345 % model.cfg.d_vocab],
        return_type="tokens", verbose=False,
    )  # fmt: skip
    assert stopped.shape[1] == tokens.shape[1] - 5
    both = [model.generate(PROMPTS, max_new_tokens=4, do_sample=False, padding_side=side, verbose=False)
            for side in ("left", "right")]  # fmt: skip
    assert both[0] == both[1]
    # freq_penalty: a huge penalty forbids any token already in the sequence (prompt included)
    out = model.generate("the little girl", max_new_tokens=8, freq_penalty=1e6, seed=0, return_type="tokens",
                         stop_at_eos=False, verbose=False)[0].tolist()  # fmt: skip
    prompt_len = model.to_tokens("the little girl").shape[1]
    for i in range(prompt_len, len(out)):
        assert out[i] not in out[:i]
    with pytest.raises(ValueError, match="do_sample=True"):
        model.generate("the", freq_penalty=1.0, do_sample=False, verbose=False)
    with pytest.raises(ValueError, match="start_at_layer=0"), without_shape_checks():
        model.generate(torch.zeros(1, 3, model.cfg.d_model), verbose=False)


@torch.no_grad()
def test_embeddings_input_points_to_start_at_layer(load_parity):
    model = load_parity("random_headwise")
    tokens = random_tokens(model)
    embeddings = model.embed(tokens)
    with pytest.raises(ValueError, match="start_at_layer=0"), without_shape_checks():
        model(embeddings)
    assert torch.equal(model(embeddings, start_at_layer=0), model(tokens))


# ---- TransformerLens evals -----------------------------------------------------------------------


@torch.no_grad()
def test_induction_loss(tmp_path):
    """evals.induction_loss draws token ids up to 20000, so this model has a vocabulary that large."""
    model, _, _ = make_tiny(tmp_path / "big_vocab", gate="headwise", seed=1, vocab_size=20001, qkv_bias=True)
    torch.manual_seed(0)
    loss = evals.induction_loss(model, batch_size=2, subseq_len=12, prepend_bos=False, device="cpu")
    torch.manual_seed(0)
    first = torch.randint(100, 20000, (2, 12))
    repeated = torch.cat([first, first], dim=1)
    expected = _nll(model(repeated), repeated)[:, 13:].mean()
    assert max_diff(loss, expected) <= TOL


def test_default_prepend_bos_follows_the_tokenizer_unless_configured(load_parity):
    model = load_parity("baseline")
    tokenizer = model.tokenizer
    model.tokenizer = None
    assert model.cfg.default_prepend_bos is False
    model.tokenizer = tokenizer  # attached after construction, as loaders may do
    assert model.cfg.default_prepend_bos is True and model.to_tokens("a dog")[0, 0] == tokenizer.bos_token_id
    fixed = type(model)(GatedQwen3Config(**{**model.cfg.to_dict(), "default_prepend_bos": False}), tokenizer)
    assert fixed.cfg.default_prepend_bos is False and fixed.to_tokens("a dog")[0, 0] != tokenizer.bos_token_id


def test_empty_prompt_raises_naming_the_bos_only_input():
    """TransformerLens gives the BOS token alone for ""; here an empty prompt is refused, and the
    error names the BOS-only input, which does give TransformerLens' answer."""
    import gated_interp

    model = gated_interp.load_hooked("gate_headwise", size="tiny", progress=False)
    for call in (model.to_tokens, model.to_str_tokens):
        with pytest.raises(ValueError, match=r"bos_token_id") as err:
            call("")
        assert "index [0] are empty" in str(err.value)
    bos_only = torch.tensor([[model.tokenizer.bos_token_id]])
    assert model.to_str_tokens(bos_only) == [model.tokenizer.bos_token]
    assert model(bos_only).shape == (1, 1, model.cfg.d_vocab)
