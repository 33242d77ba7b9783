"""Bootstrap intervals of ablation_effects and the patching sweeps, against bootstrap_ci applied by
hand to per-sequence values computed one sequence at a time."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from helpers import make_tiny as build
from helpers import random_tokens

from gated_interp.analysis import ablation_effects, open_gates, zero_ablate_heads
from gated_interp.analysis.bootstrap import bootstrap_ci, ratio_of_sums
from gated_interp.patching import logit_diff, patch_heads, patch_resid, to_dataframe


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    model, _, _ = build(tmp_path_factory.mktemp("ci"), gate="headwise", seed=8)
    return model


def _per_sequence_loss(model, tokens, mask, hooks=()):
    """[seq, 2]: summed next-token loss and number of predicted tokens, one sequence at a time."""
    rows = []
    with torch.no_grad():
        for i in range(tokens.shape[0]):
            n = int(mask[i].sum())
            logits = model.run_with_hooks(tokens[i : i + 1, :n], fwd_hooks=list(hooks))
            rows.append([float(model.loss_fn(logits, tokens[i : i + 1, :n])) * (n - 1), n - 1])
    return torch.tensor(rows, dtype=torch.float64)


def test_ablation_intervals_match_a_bootstrap_of_per_sequence_values(model):
    tokens = random_tokens(model, 6, 7)
    mask = torch.ones_like(tokens)
    mask[1, 5:] = 0
    mask[4, 3:] = 0

    def first_logit(logits, tokens, mask):  # per-sequence values [batch]
        return logits[:, 0, 3]

    hooks = zero_ablate_heads(model, [(1, 2)])
    frame = ablation_effects(
        model,
        tokens,
        {"off": hooks, "noop": []},
        metric=first_logit,
        attention_mask=mask,
        batch_size=4,
        progress=False,
        n_boot=200,
        seed=3,
    )
    assert list(frame.columns) == [
        "loss",
        "metric",
        "delta_loss",
        "delta_metric",
        "loss_lo",
        "loss_hi",
        "delta_loss_lo",
        "delta_loss_hi",
        "metric_lo",
        "metric_hi",
        "delta_metric_lo",
        "delta_metric_hi",
    ]
    clean, off = _per_sequence_loss(model, tokens, mask), _per_sequence_loss(model, tokens, mask, hooks)
    lo, hi = bootstrap_ci(clean, ratio_of_sums, n_boot=200, seed=3)
    assert (frame.loc["clean", "loss_lo"], frame.loc["clean", "loss_hi"]) == pytest.approx(
        (float(lo), float(hi)), rel=1e-5
    )
    paired = torch.stack([clean, off], dim=1)  # [seq, run, 2]
    lo, hi = bootstrap_ci(paired, lambda s: ratio_of_sums(s)[1] - ratio_of_sums(s)[0], n_boot=200, seed=3)
    # A delta is the difference of two float32 losses (batched there, one sequence at a time here),
    # so its rounding error is relative to the losses, not to the much smaller delta.
    loss_rounding = 1e-5 * float(frame.loc["clean", "loss"])
    assert (frame.loc["off", "delta_loss_lo"], frame.loc["off", "delta_loss_hi"]) == pytest.approx(
        (float(lo), float(hi)), rel=1e-5, abs=loss_rounding
    )
    # A run that changes nothing has a zero-width delta interval (the resampling is paired).
    assert frame.loc["noop", "delta_loss_lo"] == frame.loc["noop", "delta_loss_hi"] == 0
    assert frame.loc["noop", "delta_metric_lo"] == frame.loc["noop", "delta_metric_hi"] == 0
    values = torch.stack([model(tokens[i : i + 1])[0, 0, 3].detach() for i in range(6)]).double()
    lo, hi = bootstrap_ci(values, n_boot=200, seed=3)
    assert frame.loc["clean", "metric"] == pytest.approx(float(values.mean()), rel=1e-5)
    assert (frame.loc["clean", "metric_lo"], frame.loc["clean", "metric_hi"]) == pytest.approx(
        (float(lo), float(hi)), rel=1e-5
    )
    # Without n_boot the table is unchanged; bad arguments are refused.
    plain = ablation_effects(model, tokens, {"off": hooks}, attention_mask=mask, progress=False)
    assert list(plain.columns) == ["loss", "delta_loss"]
    with pytest.raises(ValueError, match="n_boot"):
        ablation_effects(model, tokens, {"off": hooks}, progress=False, n_boot=-1)


def test_ablation_scalar_metric_is_called_per_sequence(model):
    tokens = random_tokens(model, 4, 5)
    metric = partial(logit_diff, answer_tokens=1, wrong_tokens=2)  # a scalar: mean over the batch
    frame = ablation_effects(model, tokens, {"open": open_gates(model)}, metric=metric, progress=False, n_boot=100)
    per_seq = torch.stack([metric(model(tokens[i : i + 1])).detach() for i in range(4)]).double()
    lo, hi = bootstrap_ci(per_seq, n_boot=100)
    assert (frame.loc["clean", "metric_lo"], frame.loc["clean", "metric_hi"]) == pytest.approx(
        (float(lo), float(hi)), rel=1e-5
    )
    per_prompt = partial(logit_diff, answer_tokens=[1, 2, 3, 4], wrong_tokens=2)  # cannot run on one sequence
    with pytest.raises(ValueError, match="one value per sequence"):
        ablation_effects(model, tokens, {"open": open_gates(model)}, metric=per_prompt, progress=False, n_boot=10)


def test_patching_intervals_match_a_bootstrap_of_one_prompt_sweeps(model):
    clean, corrupted = random_tokens(model, 5, 6, seed=1), random_tokens(model, 5, 6, seed=2)
    metric = partial(logit_diff, answer_tokens=4, wrong_tokens=9)
    _, cache = model.run_with_cache(clean)
    plain = patch_heads(model, corrupted, cache, metric, progress=False)
    values, lo, hi = patch_heads(model, corrupted, cache, metric, progress=False, n_boot=150, seed=2, batch_size=5)
    assert torch.equal(values, plain)
    # Prompts do not interact, so prompt i's value under each patch is a one-prompt sweep.
    one = torch.stack(
        [
            patch_heads(
                model, corrupted[i : i + 1], {k: v[i : i + 1] for k, v in cache.items()}, metric, progress=False
            )
            for i in range(5)
        ]
    ).double()  # [prompt, layer, head]
    ref_lo, ref_hi = bootstrap_ci(one, n_boot=150, seed=2)
    assert torch.allclose(lo.double(), ref_lo, atol=1e-5) and torch.allclose(hi.double(), ref_hi, atol=1e-5)
    assert (lo <= hi).all()
    frame = to_dataframe(values, ("layer", "head"), lo=lo, hi=hi)
    assert list(frame.columns) == ["layer", "head", "value", "value_lo", "value_hi"]

    def per_prompt_metric(logits):  # [batch] values work directly
        return logits[:, -1, 4] - logits[:, -1, 9]

    values2, lo2, hi2 = patch_resid(model, corrupted, cache, per_prompt_metric, progress=False, n_boot=50)
    v3, lo3, hi3 = patch_resid(model, corrupted, cache, metric, progress=False, n_boot=50)
    assert torch.allclose(values2, v3, atol=1e-5) and torch.allclose(lo2, lo3, atol=1e-5)
    with pytest.raises(ValueError, match="n_boot"):
        patch_resid(model, corrupted, cache, metric, progress=False, n_boot=-2)


def test_interval_bars_draw_the_table_intervals(model):
    import matplotlib

    matplotlib.use("Agg")
    from gated_interp.plotting import interval_bars

    tokens = random_tokens(model, 4, 6)
    frame = ablation_effects(model, tokens, {"open": open_gates(model)}, progress=False, n_boot=50)
    fig = interval_bars(frame, "delta_loss", title="4 random sequences, 95% bootstrap CI")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["clean", "open"]
    bars = sorted(ax.patches, key=lambda p: -p.get_y())
    assert [b.get_width() for b in bars] == pytest.approx(frame.delta_loss.to_list())
    segments = [c for c in ax.collections if hasattr(c, "get_segments")][0].get_segments()
    ends = sorted((float(s[0][0]), float(s[1][0])) for s in segments)
    expected = sorted(
        (min(lo, v), max(hi, v)) for lo, hi, v in zip(frame.delta_loss_lo, frame.delta_loss_hi, frame.delta_loss)
    )
    assert [x for pair in ends for x in pair] == pytest.approx([x for pair in expected for x in pair])
    with pytest.raises(KeyError, match="no column"):
        interval_bars(frame, "metric")
