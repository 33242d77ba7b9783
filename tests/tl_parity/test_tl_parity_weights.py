"""TransformerLens weight idioms give TransformerLens' numbers: folded norms, biases, the state dict,
dtype/device changes, SVDInterpreter, composition scores, accumulated bias.

Every idiom runs on the three bundled tiny models and on random headwise, elementwise and ungated
models with biases (random norm weights 1 ± 0.1, so folding moves real numbers). Tolerances: 1e-4
absolute in float32, where two computations differ only in the order of float operations (a
folded weight is `w * W` rounded once; the raw model rounds `w * x` instead); `torch.equal`
where the same weights meet the same arithmetic.
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers import make_tiny, max_diff, without_shape_checks
from safetensors.torch import load_file
from transformer_lens import FactoredMatrix, SVDInterpreter

import gated_interp
from gated_interp import CheckpointError, HookedGatedQwen3

TOL = 1e-4
BUNDLED = ("baseline", "gate_headwise", "gate_elementwise")
RANDOM = ("random_none", "random_headwise", "random_elementwise")
MODELS = BUNDLED + RANDOM


@pytest.fixture(scope="module")
def random_folders(tmp_path_factory) -> dict:
    """Random checkpoints with biases (GQA 4 query / 2 kv heads, 2 layers), one per gate kind."""
    folders = {}
    for gate in ("none", "headwise", "elementwise"):
        folder = tmp_path_factory.mktemp(f"random_{gate}")
        make_tiny(folder, gate=gate, seed=31, qkv_bias=True)
        folders[f"random_{gate}"] = folder
    return folders


@pytest.fixture
def load(random_folders):
    """`load(kind, **load_hooked_kwargs)`: a bundled tiny model or a random one with biases."""

    def _load(kind: str, **kwargs) -> HookedGatedQwen3:
        kwargs.setdefault("progress", False)
        if kind in BUNDLED:
            return gated_interp.load_hooked(kind, size="tiny", device="cpu", **kwargs)
        return gated_interp.load_hooked(str(random_folders[kind]), device="cpu", **kwargs)

    return _load


def _tokens(model: HookedGatedQwen3, batch: int = 2, pos: int = 7, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, model.cfg.d_vocab, (batch, pos), generator=torch.Generator().manual_seed(seed))


# ---- folded norms ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", MODELS)
@torch.no_grad()
def test_folding_moves_norm_weights_into_their_readers(load, kind):
    raw, folded = load(kind, fold_ln=False), load(kind)
    assert raw.cfg.normalization_type == "RMS" and folded.cfg.normalization_type == "RMSPre"
    for r, f in zip(raw.blocks, folded.blocks):
        ln1, ln2 = r.ln1.w[:, None], r.ln2.w[:, None]
        assert torch.equal(f.attn.W_Q, r.attn.W_Q * ln1)
        assert torch.equal(f.attn._W_K, r.attn._W_K * ln1) and torch.equal(f.attn._W_V, r.attn._W_V * ln1)
        if raw.cfg.gate != "none":
            assert torch.equal(f.attn.W_G, r.attn.W_G * ln1)  # the gate reads ln1's output too
        assert torch.equal(f.mlp.W_gate, r.mlp.W_gate * ln2) and torch.equal(f.mlp.W_in, r.mlp.W_in * ln2)
        assert torch.equal(f.attn.W_O, r.attn.W_O) and torch.equal(f.mlp.W_out, r.mlp.W_out)
        # q/k norm weights stay: rotary sits between them and the dot product
        assert torch.equal(f.attn.q_norm.w, r.attn.q_norm.w) and torch.equal(f.attn.k_norm.w, r.attn.k_norm.w)
        assert bool((f.ln1.w == 1).all()) and bool((f.ln2.w == 1).all())
    assert torch.equal(folded.W_U, raw.W_U * raw.ln_final.w[:, None])
    assert bool((folded.ln_final.w == 1).all())
    assert torch.equal(folded.W_E, raw.W_E)


@pytest.mark.parametrize("kind", MODELS)
@torch.no_grad()
def test_folded_and_raw_give_the_same_logits_and_every_hook(load, kind):
    """Folding moves weights only: every hook value (ln*.hook_normalized is the unweighted norm
    output, so it does not move either) and the logits agree to float rounding."""
    raw, folded = load(kind, fold_ln=False), load(kind)
    for model in (raw, folded):  # so that the switched hooks fire as well (use_attn_in excludes split inputs)
        model.set_use_attn_result(True)
        model.set_use_split_qkv_input(True)
        model.set_use_hook_mlp_in(True)
        model.set_use_hook_tokens(True)
    tokens = _tokens(raw)
    raw_logits, raw_cache = raw.run_with_cache(tokens)
    folded_logits, folded_cache = folded.run_with_cache(tokens)
    assert max_diff(folded_logits, raw_logits) <= TOL
    every_hook = {name for name in raw.hook_dict if not name.endswith("hook_attn_in")}
    assert set(folded_cache.keys()) == set(raw_cache.keys()) == every_hook
    changed = [name for name in raw_cache.keys() if max_diff(folded_cache[name], raw_cache[name]) > TOL]
    assert changed == []


@pytest.mark.parametrize("kind", MODELS)
@torch.no_grad()
def test_decomposition_dotted_with_W_U_sums_to_the_logit(load, kind):
    """TL's idiom on a folded model: `decompose_resid(apply_ln=True) @ W_U[:, t] + b_U[t]` is the
    logit, and `tokens_to_residual_directions(t)` is exactly `W_U[:, t]`."""
    model = load(kind)
    tokens = _tokens(model)
    answers = tokens[:, 0]
    logits, cache = model.run_with_cache(tokens)
    expected = logits[torch.arange(len(answers)), -1, answers]
    parts = cache.decompose_resid(apply_ln=True, pos_slice=-1)  # [component, batch, d_model]
    by_W_U = torch.einsum("cbm,mb->b", parts, model.W_U[:, answers]) + model.b_U[answers]
    assert max_diff(by_W_U, expected) <= TOL
    assert torch.equal(model.tokens_to_residual_directions(answers), model.W_U[:, answers].T)
    single = model.W_U[:, int(answers[0])]
    for one_token in (int(answers[0]), answers[0], answers[:1]):  # TL: one token, one [d_model] direction
        assert torch.equal(model.tokens_to_residual_directions(one_token), single)
    # logit_attrs (which divides by ln_final's scale itself) agrees
    attrs = cache.logit_attrs(cache.decompose_resid(apply_ln=False, pos_slice=-1), answers, pos_slice=-1)
    assert max_diff(attrs.sum(0), expected) <= TOL


@pytest.mark.parametrize("kind", ["gate_headwise", "random_elementwise"])
@torch.no_grad()
def test_residual_directions_are_not_folded_twice(load, kind):
    """A raw model applies ln_final.w inside tokens_to_residual_directions; a folded one has it in
    W_U and a norm weight of ones: the directions agree, and both give the logit."""
    raw, folded = load(kind, fold_ln=False), load(kind)
    t = torch.arange(5)
    raw_directions = raw.tokens_to_residual_directions(t)
    assert torch.equal(raw_directions, (raw.ln_final.w[:, None] * raw.W_U)[:, t].T)
    assert max_diff(folded.tokens_to_residual_directions(t), raw_directions) <= 1e-6
    tokens = _tokens(raw)
    logits, cache = raw.run_with_cache(tokens)
    parts = cache.decompose_resid(apply_ln=True, pos_slice=-1)
    answer = int(tokens[0, 0])
    assert max_diff((parts[:, 0] @ raw.tokens_to_residual_directions(answer)).sum(), logits[0, -1, answer]) <= TOL


@torch.no_grad()
def test_folding_again_changes_nothing_and_state_dict_form_leaves_the_model_alone(load):
    raw, folded = load("random_headwise", fold_ln=False), load("random_headwise")
    before = {k: v.clone() for k, v in raw.state_dict().items()}
    folded_state = raw.fold_layer_norm(raw.state_dict())  # TL 2.x's form: returns a state dict
    assert all(torch.equal(before[k], v) for k, v in raw.state_dict().items())
    assert all(torch.equal(folded_state[k], v) for k, v in folded.state_dict().items())
    again = {k: v.clone() for k, v in folded.state_dict().items()}
    assert folded.fold_layer_norm() is folded
    assert all(torch.equal(again[k], v) for k, v in folded.state_dict().items())


@torch.no_grad()
def test_center_unembed_shifts_logits_by_a_constant_per_position(load):
    raw, centred = load("gate_elementwise", fold_ln=False), load("gate_elementwise", center_unembed=True)
    assert centred.W_U.mean(-1).abs().max() <= 1e-6
    tokens = _tokens(raw)
    raw_logits, centred_logits = raw(tokens), centred(tokens)
    assert max_diff(centred_logits.log_softmax(-1), raw_logits.log_softmax(-1)) <= TOL
    assert max_diff(centred_logits, raw_logits - raw_logits.mean(-1, keepdim=True)) <= TOL


def test_options_that_cannot_apply_raise(load):
    model = load("gate_headwise", fold_ln=False)
    with pytest.raises(ValueError, match="RMSNorm"):
        model.process_weights_(center_writing_weights=True)
    with pytest.raises(ValueError, match="rotary"):
        model.process_weights_(refactor_factored_attn_matrices=True)
    with pytest.raises(ValueError, match="gate"):
        model.process_weights_(fold_value_biases=True)
    with pytest.raises(ValueError, match="RMSNorm"):
        model.fold_layer_norm(fold_biases=True)
    assert model.cfg.normalization_type == "RMS"  # nothing was applied


@torch.no_grad()
def test_fold_value_biases_on_the_ungated_model(load):
    """Each attention row sums to one, so b_V contributes b_V @ W_O whatever the pattern: moving
    it into b_O keeps attn_out and the logits; hook_v and hook_z lose the bias by design."""
    raw = load("random_none", fold_ln=False)
    folded = load("random_none", fold_ln=False).process_weights_(fold_ln=False, fold_value_biases=True)
    assert bool((folded.blocks[0].attn._b_V == 0).all()) and not bool((raw.blocks[0].attn._b_V == 0).all())
    expected_b_O = raw.blocks[0].attn.b_O + torch.einsum("hd,hdm->m", raw.blocks[0].attn.b_V, raw.blocks[0].attn.W_O)
    assert max_diff(folded.blocks[0].attn.b_O, expected_b_O) <= 1e-6
    tokens = _tokens(raw)
    raw_logits, raw_cache = raw.run_with_cache(tokens)
    logits, cache = folded.run_with_cache(tokens)
    assert max_diff(logits, raw_logits) <= TOL
    assert max_diff(cache["attn_out", 0], raw_cache["attn_out", 0]) <= TOL
    assert max_diff(cache["v", 0] + raw.blocks[0].attn._b_V, raw_cache["v", 0]) <= TOL


@pytest.mark.parametrize("kind", ["gate_headwise", "random_elementwise"])
@torch.no_grad()
def test_save_hf_of_a_folded_model_loads_to_the_same_function(load, kind, tmp_path):
    folded = load(kind)
    gated_interp.save_hf(folded, tmp_path / "saved")
    tokens = _tokens(folded)
    for fold_ln in (False, True):  # folding ones is a no-op
        again = gated_interp.load_hooked(str(tmp_path / "saved"), device="cpu", progress=False, fold_ln=fold_ln)
        assert torch.equal(again(tokens), folded(tokens))


@torch.no_grad()
def test_folding_a_tied_model_unties_W_U_and_leaves_W_E(tmp_path):
    make_tiny(tmp_path / "tied", gate="headwise", seed=8, tie_word_embeddings=True)
    raw = gated_interp.load_hooked(str(tmp_path / "tied"), device="cpu", progress=False, fold_ln=False)
    assert raw.cfg.tie_word_embeddings and "unembed.W_U" not in raw.state_dict()
    folded = gated_interp.load_hooked(str(tmp_path / "tied"), device="cpu", progress=False)
    assert not folded.cfg.tie_word_embeddings and "unembed.W_U" in dict(folded.named_parameters())
    assert torch.equal(folded.W_E, raw.W_E)  # the embedding is not modified
    assert torch.equal(folded.W_U, raw.W_E.T * raw.ln_final.w[:, None])
    tokens = _tokens(raw)
    assert max_diff(folded(tokens), raw(tokens)) <= TOL
    # save_hf writes the now separate unembedding as lm_head, and the config says untied
    gated_interp.save_hf(folded, tmp_path / "saved")
    assert "lm_head.weight" in load_file(tmp_path / "saved" / "model.safetensors")
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["tie_word_embeddings"] is False
    again = gated_interp.load_hooked(str(tmp_path / "saved"), device="cpu", progress=False)
    assert torch.equal(again(tokens), folded(tokens))


# ---- dtype and device --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@torch.no_grad()
def test_casting_keeps_cfg_in_step_and_generate_works(load, dtype):
    """`.bfloat16()`, `.half()` and `.to(dtype)` give exactly the model loaded in that dtype (the
    bundled files are bf16, the fold is rounded once either way, the rotary table stays fp32)."""
    model = load("gate_headwise")
    cast = {torch.bfloat16: model.bfloat16, torch.float16: model.half}[dtype]()
    assert cast is model and model.cfg.dtype == dtype and model.W_Q.dtype == dtype
    assert model.rotary.inv_freq.dtype == torch.float32
    direct = load("gate_headwise", dtype=dtype)
    assert direct.cfg.dtype == dtype
    tokens = _tokens(model)
    assert torch.equal(model(tokens), direct(tokens))
    out = model.generate("Once upon a time", max_new_tokens=5, do_sample=False, verbose=False)
    assert out == direct.generate("Once upon a time", max_new_tokens=5, do_sample=False, verbose=False)
    assert isinstance(out, str) and out.startswith("Once upon a time")
    model.float()
    assert model.cfg.dtype == torch.float32 and model.W_E.dtype == torch.float32
    model.to(torch.bfloat16)
    assert model.cfg.dtype == torch.bfloat16
    assert model.to("cpu", print_details=False) is model and model.cfg.device == "cpu"
    model.cpu()
    assert model.cfg.device == "cpu"


# ---- biases ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", MODELS)
def test_biases_exist_in_transformer_lens_shapes(load, kind):
    model = load(kind)
    cfg = model.cfg
    L, h, kv, d, m, f = cfg.n_layers, cfg.n_heads, cfg.n_key_value_heads, cfg.d_head, cfg.d_model, cfg.d_mlp
    attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
    shapes = {
        attn.b_Q: (h, d),
        attn.b_K: (h, d),
        attn.b_V: (h, d),
        attn._b_K: (kv, d),
        attn._b_V: (kv, d),
        attn.b_O: (m,),
        mlp.b_in: (f,),
        mlp.b_gate: (f,),
        mlp.b_out: (m,),
        model.b_U: (cfg.d_vocab,),
        model.b_Q: (L, h, d),
        model.b_K: (L, h, d),
        model.b_V: (L, h, d),
        model.b_O: (L, m),
        model.b_in: (L, f),
        model.b_out: (L, m),
    }
    for tensor, shape in shapes.items():
        assert tuple(tensor.shape) == shape
    assert torch.equal(model.b_K[0], attn._b_K.repeat_interleave(cfg.n_groups, dim=0))
    if cfg.gate != "none":
        assert attn.b_G.shape == (h, cfg.gate_width) and model.b_G.shape == (L, h, cfg.gate_width)
    params = dict(model.named_parameters())
    # trainable exactly when the checkpoint has them; the MLP and unembedding never have any
    assert ("blocks.0.attn.b_Q" in params) == cfg.qkv_bias == (kind in RANDOM)
    assert not any(name.endswith(("b_in", "b_gate", "b_out", "b_U")) for name in params)
    if not cfg.qkv_bias:
        assert all(bool((b == 0).all()) for b in (model.b_Q, model.b_K, model.b_V, model.b_O))
    assert all(bool((b == 0).all()) for b in (model.b_in, model.b_out, model.b_U))


@torch.no_grad()
def test_a_value_written_into_a_zero_bias_takes_effect_and_save_refuses_to_drop_it(load, tmp_path):
    model = load("baseline")
    tokens = _tokens(model)
    _, before = model.run_with_cache(tokens)
    model.blocks[1].attn.b_O += 0.5
    _, after = model.run_with_cache(tokens)
    assert max_diff(after["attn_out", 1], before["attn_out", 1] + 0.5) <= TOL
    with pytest.raises(CheckpointError, match=r"blocks\.1\.attn\.b_O is non-zero"):
        gated_interp.save_hf(model, tmp_path / "refused")
    model.blocks[1].attn.b_O.zero_()
    gated_interp.save_hf(model, tmp_path / "saved")
    assert not any(name.endswith(".bias") for name in load_file(tmp_path / "saved" / "model.safetensors"))


@torch.no_grad()
def test_init_weights_and_training_parameters_leave_zero_biases_alone(load):
    model = load("gate_headwise")
    model.blocks[0].attn.b_O += 1.0
    model.init_weights(seed=3)
    assert all(bool((b == 0).all()) for b in (model.b_Q, model.b_O, model.b_G, model.b_in, model.b_out))
    trainable = {name for name, _ in model.named_parameters()}
    assert not any(".b_" in name or "._b_" in name for name in trainable)


# ---- state dict and SVDInterpreter -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gate_elementwise", "random_headwise", "random_none"])
@torch.no_grad()
def test_state_dict_has_transformer_lens_keys_and_round_trips(load, kind):
    model = load(kind)
    state = model.state_dict()
    for key in (
        "embed.W_E",
        "unembed.W_U",
        "unembed.b_U",
        "blocks.0.attn.W_Q",
        "blocks.0.attn._W_K",
        "blocks.0.attn.b_Q",
        "blocks.0.attn._b_K",
        "blocks.0.attn._b_V",
        "blocks.0.attn.b_O",
        "blocks.0.mlp.W_in",
        "blocks.0.mlp.b_in",
        "blocks.0.mlp.b_out",
        "blocks.0.ln1.w",
        "ln_final.w",
    ):
        assert key in state, key
    other = HookedGatedQwen3(model.cfg, tokenizer=model.tokenizer)
    assert not other.load_state_dict(state).missing_keys
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in state.items())
    tokens = _tokens(model)
    assert torch.equal(other(tokens), model(tokens))


@pytest.mark.parametrize("kind", ["gate_headwise", "random_elementwise"])
@torch.no_grad()
def test_svd_interpreter_runs_and_matches_a_hand_computation(load, kind):
    model = load(kind)
    svd = SVDInterpreter(model)
    k = 4
    W_U = model.W_U
    # w_out: TL takes the right singular vectors of W_out [d_mlp, d_model] and reads them through W_U
    _, _, Vh = torch.linalg.svd(model.blocks[1].mlp.W_out)
    expected = (W_U.T @ Vh[:k].T)[:, None, :]
    assert torch.equal(svd.get_singular_vectors("w_out", layer_index=1, num_vectors=k), expected)
    # OV of a head on a GQA model: the expanded W_V. Singular vectors are defined up to sign.
    ov = svd.get_singular_vectors("OV", layer_index=1, head_index=3, num_vectors=k)
    _, _, Vh = torch.linalg.svd(model.W_V[1, 3] @ model.W_O[1, 3])
    expected = (W_U.T @ Vh[:k].T)[:, None, :]
    assert ov.shape == (model.cfg.d_vocab, 1, k)
    assert max_diff(ov.abs(), expected.abs()) <= 1e-3 * expected.abs().max()
    assert svd.get_singular_vectors("w_in", layer_index=0, num_vectors=k).shape == (model.cfg.d_vocab, 1, k)
    assert set(model.tl_parameters()) >= {"unembed.W_U", "blocks.0.attn.W_V", "blocks.0.attn.W_K"}


@torch.no_grad()
def test_svd_interpreter_on_a_tied_raw_model_reads_the_embedding(tmp_path):
    make_tiny(tmp_path / "tied", gate="none", seed=9, tie_word_embeddings=True)
    model = gated_interp.load_hooked(str(tmp_path / "tied"), device="cpu", progress=False, fold_ln=False)
    params = model.tl_parameters()
    assert torch.equal(params["unembed.W_U"], model.W_E.T)
    # unfolded: TL's w_in multiplies by ln2.w itself
    w_in = SVDInterpreter(model).get_singular_vectors("w_in", layer_index=0, num_vectors=2)
    _, _, Vh = torch.linalg.svd(model.blocks[0].mlp.W_in.T * model.blocks[0].ln2.w)
    assert torch.equal(w_in, (model.W_E @ Vh[:2].T)[:, None, :])


# ---- head labels, composition scores, accumulated bias -----------------------------------------


def test_all_head_labels(load):
    model = load("gate_headwise")
    labels = model.all_head_labels()
    assert labels == [f"L{layer}H{head}" for layer in range(model.cfg.n_layers) for head in range(model.cfg.n_heads)]
    assert labels[0] == "L0H0" and labels[-1] == f"L{model.cfg.n_layers - 1}H{model.cfg.n_heads - 1}"


def _frobenius_score(left: torch.Tensor, right: torch.Tensor) -> float:
    return ((left @ right).norm() / (left.norm() * right.norm())).item()


@pytest.mark.parametrize("kind", ["gate_elementwise", "random_headwise"])
@pytest.mark.parametrize("mode", ["Q", "K", "V"])
@torch.no_grad()
def test_all_composition_scores_match_a_hand_computation(load, kind, mode):
    model = load(kind)
    cfg = model.cfg
    scores = model.all_composition_scores(mode)
    assert scores.shape == (cfg.n_layers, cfg.n_heads, cfg.n_layers, cfg.n_heads)
    groups = cfg.n_groups
    for l1, h1, l2, h2 in [(0, 0, 1, 3), (0, 2, 1, 1), (cfg.n_layers - 2, 1, cfg.n_layers - 1, 0)]:
        a1, a2 = model.blocks[l1].attn, model.blocks[l2].attn
        ov1 = a1._W_V[h1 // groups] @ a1.W_O[h1]  # key-value head of query head h1
        q2, k2 = a2.W_Q[h2], a2._W_K[h2 // groups]
        right = {"Q": q2 @ k2.T, "K": k2 @ q2.T, "V": a2._W_V[h2 // groups] @ a2.W_O[h2]}[mode]
        assert scores[l1, h1, l2, h2].item() == pytest.approx(_frobenius_score(ov1, right), rel=1e-4)
    layer = torch.arange(cfg.n_layers)
    not_later = layer[:, None, None, None] >= layer[None, None, :, None]
    assert bool((scores[not_later.expand_as(scores)] == 0).all())
    with without_shape_checks(), pytest.raises(ValueError, match="mode"):
        model.all_composition_scores("O")


@torch.no_grad()
def test_accumulated_bias_sums_and_asserts_as_transformer_lens(load):
    model = load("random_headwise")
    n = model.cfg.n_layers
    b_O = [block.attn.b_O for block in model.blocks]
    assert torch.equal(model.accumulated_bias(0), torch.zeros(model.cfg.d_model))
    assert max_diff(model.accumulated_bias(1), b_O[0]) <= 1e-7
    assert max_diff(model.accumulated_bias(1, mlp_input=True), b_O[0] + b_O[1]) <= 1e-7
    assert max_diff(model.accumulated_bias(n), sum(b_O)) <= 1e-7
    model.blocks[0].mlp.b_out += 1.0  # a zero buffer, but counted when include_mlp_biases
    assert max_diff(model.accumulated_bias(1), b_O[0] + 1.0) <= 1e-6
    assert max_diff(model.accumulated_bias(1, include_mlp_biases=False), b_O[0]) <= 1e-7
    with pytest.raises(AssertionError, match="beyond the final layer"):
        model.accumulated_bias(n, mlp_input=True)
    for layer in (-1, n + 1):
        with pytest.raises(IndexError, match="out of range"):
            model.accumulated_bias(layer)


@torch.no_grad()
def test_accumulated_bias_is_the_bias_part_of_the_residual(load):
    """With every weight matrix zero, the residual entering block l is the embedding plus exactly
    accumulated_bias(l)."""
    model = load("random_none", fold_ln=False)
    for block in model.blocks:
        for W in (block.attn.W_O, block.mlp.W_out):
            W.zero_()
    tokens = _tokens(model)
    _, cache = model.run_with_cache(tokens)
    for layer in range(model.cfg.n_layers):
        resid = cache["resid_pre", layer] - cache["hook_embed"]
        assert max_diff(resid, model.accumulated_bias(layer).expand_as(resid)) <= 1e-6
        mid = cache["resid_mid", layer] - cache["hook_embed"]
        assert max_diff(mid, model.accumulated_bias(layer, mlp_input=True).expand_as(mid)) <= 1e-6


def test_factored_matrices_use_expanded_heads(load):
    model = load("random_elementwise")
    assert isinstance(model.OV, FactoredMatrix) and model.OV.A.shape == (2, 4, 64, 16)


@pytest.mark.parametrize("kind", ["random_headwise", "random_elementwise", "gate_headwise"])
@pytest.mark.parametrize("expand_neurons", [False, True])
@torch.no_grad()
def test_full_resid_decomposition_with_its_bias_term_sums_to_the_residual(load, kind, expand_neurons):
    """TL's get_full_resid_decomposition adds accumulated_bias as its last component ("bias")."""
    model = load(kind)
    model.set_use_attn_result(True)
    _, cache = model.run_with_cache(_tokens(model))
    parts, labels = cache.get_full_resid_decomposition(expand_neurons=expand_neurons, return_labels=True)
    assert labels[-1] == "bias"
    assert max_diff(parts[-1, 0, 0], model.accumulated_bias(model.cfg.n_layers)) <= 1e-6
    assert max_diff(parts.sum(0), cache["resid_post", -1]) <= TOL


# ---- TransformerLens' processing names that cannot hold here: the promised errors ---------------


def test_tl_processing_methods_raise_naming_why(load):
    """TransformerLens' methods exist under their names: the ones that cannot hold raise a
    ValueError saying why (not AttributeError), and nothing is changed."""
    model = load("gate_headwise", fold_ln=False)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    with pytest.raises(ValueError, match="RMSNorm does not subtract the mean"):
        model.center_writing_weights()
    with pytest.raises(ValueError, match="rotary"):
        model.refactor_factored_attn_matrices(model.state_dict())
    with pytest.raises(ValueError, match="gated model"):
        model.fold_value_biases()
    with pytest.raises(ValueError, match="gated model"):
        model.fold_value_biases(model.state_dict())
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())


@torch.no_grad()
def test_fold_value_biases_method_is_process_weights_option(load):
    """On an ungated model, TL's `fold_value_biases()` folds in place like the option; with a state
    dict it returns a folded copy and leaves the model alone."""
    by_option = load("random_none", fold_ln=False).process_weights_(fold_ln=False, fold_value_biases=True)
    model = load("random_none", fold_ln=False)
    copy = model.fold_value_biases(model.state_dict())
    assert not bool((model.blocks[0].attn._b_V == 0).all())  # the state-dict form left it alone
    assert model.fold_value_biases() is model
    for name, value in by_option.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
        assert max_diff(copy[name], value) <= 1e-6, name


def test_load_hooked_takes_tl_processing_options(load, random_folders):
    """`load_hooked` takes TransformerLens' from_pretrained options by name: those that cannot hold
    raise the same explanation as process_weights_ (not TypeError), before any weight is read."""
    with pytest.raises(ValueError, match="RMSNorm does not subtract the mean"):
        load("gate_headwise", center_writing_weights=True)
    with pytest.raises(ValueError, match="rotary"):
        load("gate_headwise", refactor_factored_attn_matrices=True)
    with pytest.raises(ValueError, match="gated model"):
        load("random_headwise", fold_value_biases=True)
    folded = load("random_none", fold_ln=False, fold_value_biases=True)
    expected = load("random_none", fold_ln=False).process_weights_(fold_ln=False, fold_value_biases=True)
    for name, value in expected.state_dict().items():
        assert torch.equal(folded.state_dict()[name], value), name
