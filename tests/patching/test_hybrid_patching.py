"""Activation patching, attribution patching and AtP* on a hybrid (Qwen3.5) model.

A tiny random Qwen3.5 folder (tests/hybrid_models.py, every weight perturbed) with layers
linear, full, linear, full. Every sweep must equal one full forward per patch (TransformerLens'
`generic_activation_patch` with an `index_df`, or a hand loop of `run_with_hooks` where the batch is
padded), over full-attention heads (rows 1, 3; NaN rows 0, 2) and Gated DeltaNet value heads (rows
0, 2), all-position and by position: a by-position copy resumes each linear layer from the
corrupted run's recurrent and convolution state, which must be exactly the state it would have.
"""

from __future__ import annotations

import itertools
from functools import partial

import pandas as pd
import pytest
import torch
import transformer_lens.patching as tl_patching
from hybrid_models import QWEN3_5_08B_WIDTHS, hybrid_checkpoint

from gated_interp.hooks import hook_name
from gated_interp.loading.load import load_folder
from gated_interp.patching import (
    atp_star,
    attribution_patching,
    attribution_patching_from_cache,
    logit_diff,
    patch_heads,
    patch_resid,
    screen_and_verify,
)

LAYER_TYPES = ["linear_attention", "full_attention", "linear_attention", "full_attention"]
FULL, LINEAR = [1, 3], [0, 2]
N_PROMPTS, N_POS = 3, 7


def _setup(folder, **shape):
    hybrid_checkpoint("qwen3_5_text", folder, seed=5, layer_types=LAYER_TYPES, **shape)
    model = load_folder(folder, device="cpu", fold_ln=False, progress=False).eval()
    gen = torch.Generator().manual_seed(2)
    clean, corrupted = (torch.randint(1, 64, (N_PROMPTS, N_POS), generator=gen) for _ in range(2))
    # each row's last real token: right padding ends row 1 at 4; left padding keeps the last column
    metric = partial(logit_diff, answer_tokens=[5, 6, 7], wrong_tokens=[8, 9, 10], position=[-1, 4, -1])
    return model, clean, corrupted, metric


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return _setup(tmp_path_factory.mktemp("qwen3_5_patching"))


def masks() -> dict[str, torch.Tensor | None]:
    right = torch.ones(N_PROMPTS, N_POS, dtype=torch.long)
    right[1, 5:] = 0
    left = torch.ones(N_PROMPTS, N_POS, dtype=torch.long)
    left[0, :2] = 0  # rows 0 and 2 start later, by different amounts: their prefixes (and states) differ
    left[2, :3] = 0
    return {"none": None, "right": right, "left": left}


@torch.no_grad()
def loop_sweep(model, tokens, mask, clean_cache, metric, activation, layers, n_heads, per_position):
    """The reference: one full forward of the whole batch per patch (layer, head?, pos?), the clean
    value written by a hook, as TransformerLens' loop does, with the mask passed through; NaN rows
    on the layers without the activation."""
    shape = (model.cfg.n_layers, *((n_heads,) if n_heads else ()), *((N_POS,) if per_position else ()))
    values = torch.full(shape, float("nan"))
    for layer in layers:
        name = hook_name(activation, layer)
        for rest in itertools.product(*(range(size) for size in shape[1:])):
            head = rest[0] if n_heads else slice(None)
            pos = rest[-1] if per_position else slice(None)

            def hook(act, hook, head=head, pos=pos, name=name):
                act = act.clone()
                if activation == "pattern":
                    act[:, head, pos] = clean_cache[name][:, head, pos]
                else:
                    where = (slice(None), pos, head)
                    act[where] = clean_cache[name][where]
                return act

            logits = model.run_with_hooks(tokens, attention_mask=mask, fwd_hooks=[(name, hook)])
            values[(layer, *rest)] = metric(logits)
    return values


@pytest.mark.slow
def test_sweeps_equal_transformer_lens_index_df(setup):
    """Unpadded: `generic_activation_patch` over an index_df of the layers that have each activation."""
    model, clean, corrupted, metric = setup
    _, clean_cache = model.run_with_cache(clean)
    cfg = model.cfg
    heads, by_pos = tl_patching.layer_head_vector_patch_setter, tl_patching.layer_pos_head_vector_patch_setter
    cases = [  # (activation, layers, heads, setter, index columns)
        ("z", FULL, cfg.n_heads, heads, ["layer", "head"]),
        ("recurrent_out", LINEAR, cfg.linear_n_value_heads, heads, ["layer", "head"]),
        ("lin_gate", LINEAR, cfg.linear_n_value_heads, by_pos, ["layer", "pos", "head"]),
        ("resid_pre", range(cfg.n_layers), 0, tl_patching.layer_pos_patch_setter, ["layer", "pos"]),
    ]
    for activation, layers, n_heads, setter, columns in cases:
        sizes = {"layer": list(layers), "head": range(n_heads), "pos": range(N_POS)}
        index_df = pd.DataFrame(list(itertools.product(*(sizes[c] for c in columns))), columns=columns)
        theirs = tl_patching.generic_activation_patch(
            model, corrupted, clean_cache, metric, setter, activation, index_df=index_df
        )
        per_position = "pos" in columns
        if activation == "resid_pre":
            ours = patch_resid(model, corrupted, clean_cache, metric, progress=False)
        else:
            ours = patch_heads(model, corrupted, clean_cache, metric, activation, per_position, progress=False)
        other = [layer for layer in range(cfg.n_layers) if layer not in layers]
        assert torch.isnan(ours[other]).all(), activation  # the other layer type's rows: not measured
        index = tuple(torch.tensor(index_df[c].to_numpy()) for c in ("layer", "head", "pos") if c in columns)
        torch.testing.assert_close(ours[index], theirs.float(), atol=2e-5, rtol=0, msg=activation)


@pytest.mark.slow
@pytest.mark.parametrize("padding", ["none", "right", "left"])
def test_by_position_sweeps_resume_linear_layers_exactly(setup, padding):
    """Chunks of mixed start positions (batch_size=5), padded batches included: every value equals
    a full forward of the patched batch."""
    model, clean, corrupted, metric = setup
    mask = masks()[padding]
    cfg = model.cfg
    _, clean_cache = model.run_with_cache(clean, attention_mask=mask)
    kwargs = dict(attention_mask=mask, progress=False, batch_size=5)
    for activation in ("resid_pre", "attn_out"):
        got = patch_resid(model, corrupted, clean_cache, metric, activation, **kwargs)
        want = loop_sweep(model, corrupted, mask, clean_cache, metric, activation, range(cfg.n_layers), 0, True)
        torch.testing.assert_close(got, want, atol=2e-5, rtol=0, msg=activation)
    heads = {"z": (FULL, cfg.n_heads), "k": (FULL, cfg.n_key_value_heads), "pattern": (FULL, cfg.n_heads),
             "recurrent_out": (LINEAR, cfg.linear_n_value_heads), "lin_gate": (LINEAR, cfg.linear_n_value_heads),
             "lin_k": (LINEAR, cfg.linear_n_key_heads), "beta": (LINEAR, cfg.linear_n_value_heads)}  # fmt: skip
    for activation, (layers, n_heads) in heads.items():
        for per_position in (False, True):
            got = patch_heads(model, corrupted, clean_cache, metric, activation, per_position, **kwargs)
            want = loop_sweep(model, corrupted, mask, clean_cache, metric, activation, layers, n_heads, per_position)
            torch.testing.assert_close(got, want, atol=2e-5, rtol=0, equal_nan=True, msg=f"{activation} {per_position}")


def test_intervals_and_dry_run_keep_true_layers(setup):
    model, clean, corrupted, _ = setup
    metric = partial(logit_diff, answer_tokens=5, wrong_tokens=8)  # callable on one prompt, for n_boot
    _, clean_cache = model.run_with_cache(clean)
    values, lo, hi = patch_heads(model, corrupted, clean_cache, metric, "recurrent_out", n_boot=50, progress=False)
    assert values.shape == lo.shape == hi.shape == (4, model.cfg.linear_n_value_heads)
    assert torch.isnan(values[FULL]).all() and torch.isnan(lo[FULL]).all()
    assert (lo[LINEAR] <= values[LINEAR] + 1e-6).all() and (values[LINEAR] <= hi[LINEAR] + 1e-6).all()
    plan = patch_heads(model, corrupted, clean_cache, metric, "lin_gate", per_position=True, dry_run=True)
    assert plan.n_patches == len(LINEAR) * model.cfg.linear_n_value_heads * N_POS


def test_clear_errors_on_hybrid(setup, tmp_path):
    model, clean, corrupted, metric = setup
    _, clean_cache = model.run_with_cache(clean)
    with pytest.raises(ValueError, match="unknown activation 'hook_lin_out'"):
        patch_heads(model, corrupted, clean_cache, metric, "hook_lin_out", progress=False)
    from helpers import make_tiny

    dense, _, _ = make_tiny(tmp_path / "dense", gate="headwise", seed=1)
    tokens = torch.randint(0, 32, (2, 5))
    _, dense_cache = dense.run_with_cache(tokens)
    with pytest.raises(ValueError, match=r"only on linear-attention \(Gated DeltaNet\) layers, and this model has"):
        patch_heads(dense, tokens, dense_cache, lambda logits: logits[:, -1, 0].mean(), "recurrent_out")


# ---- attribution patching and AtP* ---------------------------------------------------------------
@pytest.mark.slow
def test_attribution_agrees_with_patching_to_first_order(setup):
    """Clean = corrupted · (1 + eps·noise): the estimate's error relative to the exact effect shrinks
    like eps, over both head kinds and the residual stream."""
    model, _, corrupted, metric = setup
    model = model.to(torch.float64)
    try:
        acts = ("z", "gate", "recurrent_out", "lin_gate", "lin_out", "resid_pre")
        _, corrupted_cache = model.run_with_cache(corrupted)
        base = float(metric(model(corrupted)).detach())
        gen = torch.Generator().manual_seed(1)
        noise = {name: torch.randn(t.shape, generator=gen, dtype=t.dtype) for name, t in corrupted_cache.items()}
        errors = []
        for eps in (1e-2, 1e-3):
            # Relative noise: the gated norm divides recurrent_out by its RMS, which is tiny at some
            # (position, head); an absolute eps there turns the direction, a second-order effect of O(1).
            fake_clean = {name: t * (1 + eps * noise[name]) for name, t in corrupted_cache.items()}
            estimates = attribution_patching_from_cache(model, corrupted, fake_clean, metric, acts, per_position=True)
            worst = 0.0
            for act in acts:
                if act == "resid_pre":
                    exact = patch_resid(model, corrupted, fake_clean, metric, progress=False) - base
                else:
                    exact = patch_heads(model, corrupted, fake_clean, metric, act, True, progress=False) - base
                assert estimates[act].shape == exact.shape
                torch.testing.assert_close(torch.isnan(estimates[act]), torch.isnan(exact))
                measured = ~torch.isnan(exact)
                scale = exact[measured].abs().max()
                assert scale > 0, act
                worst = max(worst, ((estimates[act] - exact)[measured].abs().max() / scale).item())
            errors.append(worst)
        # Measured: ~7.5e-3 then ~7.5e-4 (worst: resid_pre; lin_gate, float32, floors near 5e-4).
        assert errors[0] < 0.05 and errors[1] < 0.005, errors
        assert errors[1] < errors[0] / 4, errors
    finally:
        model.to(torch.float32)


def test_atp_star_over_both_head_kinds(setup):
    """Signed AtP* on the linear nodes is the plain estimate; GradDrop gives magnitudes; the
    default covers both kinds; self-patching estimates nothing."""
    model, clean, corrupted, metric = setup
    nodes = ["recurrent_out", "lin_gate", "lin_out"]
    signed = atp_star(model, clean, corrupted, metric, nodes, per_position=True, grad_drop=False)
    plain = attribution_patching(model, clean, corrupted, metric, nodes, per_position=True)
    for node in nodes:
        torch.testing.assert_close(signed[node], plain[node], equal_nan=True)
        assert torch.isnan(signed[node][FULL]).all() and not torch.isnan(signed[node][LINEAR]).any()
    star = attribution_patching(model, clean, corrupted, metric, method="atp*")
    assert {"z", "q", "k", "gate_logits", "recurrent_out", "lin_gate"} <= set(star)
    assert (star["lin_gate"][LINEAR] >= 0).all() and (star["z"][FULL] >= 0).all()
    assert torch.isnan(star["z"][LINEAR]).all() and torch.isnan(star["lin_gate"][FULL]).all()
    assert star["lin_gate"][LINEAR].abs().sum() > 0
    same = atp_star(model, corrupted, corrupted, metric)
    assert all(v[~torch.isnan(v)].abs().max() < 1e-6 for v in same.values())


def test_screen_and_verify_ranks_linear_heads(setup):
    """AtP* ranks only the layers that have the node; the verified values are `patch_heads`'."""
    model, clean, corrupted, metric = setup
    result = screen_and_verify(model, clean, corrupted, metric, top_k=3, activation="lin_gate", progress=False)
    assert set(result.table.layer) == set(LINEAR) and len(result.table) == len(LINEAR) * model.cfg.linear_n_value_heads
    _, clean_cache = model.run_with_cache(clean)
    exact = patch_heads(model, corrupted, clean_cache, metric, "lin_gate", progress=False)
    verified = result.table[result.table.verified]
    want = exact[verified["layer"].to_list(), verified["head"].to_list()].double()
    torch.testing.assert_close(torch.tensor(verified.exact_metric.to_list(), dtype=torch.float64), want)


@pytest.mark.slow
def test_sweeps_at_qwen3_5_08b_widths(tmp_path):
    """Qwen3.5-0.8B's head counts and sizes (8 query / 2 key-value heads of 256, DeltaNet 16 key /
    16 value heads of 128, d_model 1024) on four layers: full- and linear-attention head sweeps
    equal one forward per patch, by position with left padding too (the resumed delta-rule state)."""
    model, clean, corrupted, metric = _setup(tmp_path, **QWEN3_5_08B_WIDTHS)
    cfg, mask = model.cfg, masks()["left"]
    assert (cfg.n_heads, cfg.d_head, cfg.linear_n_value_heads, cfg.d_model) == (8, 256, 16, 1024)
    # by position, one linear layer (16 heads x 7 positions of one-forward references): the last
    # one before the full-attention layer, whose copies resume the corrupted run's state
    for padding, per_position, heads in [
        (None, False, {"z": (FULL, cfg.n_heads), "recurrent_out": (LINEAR, cfg.linear_n_value_heads)}),
        (mask, True, {"recurrent_out": ([LINEAR[-1]], cfg.linear_n_value_heads)}),
    ]:
        _, clean_cache = model.run_with_cache(clean, attention_mask=padding)
        for activation, (layers, n_heads) in heads.items():
            got = patch_heads(
                model, corrupted, clean_cache, metric, activation, per_position, attention_mask=padding, progress=False
            )
            want = loop_sweep(model, corrupted, padding, clean_cache, metric, activation, layers, n_heads, per_position)
            torch.testing.assert_close(
                got[layers], want[layers], atol=5e-5, rtol=0, equal_nan=True, msg=f"{activation} {per_position}"
            )
