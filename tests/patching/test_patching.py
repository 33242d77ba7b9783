"""gated_interp.patching: batched activation patching, attribution patching, metrics, heatmap."""

from __future__ import annotations

from functools import partial

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402
import transformer_lens.patching as tl_patching  # noqa: E402
from helpers import GATES, make_tiny, without_shape_checks  # noqa: E402

from gated_interp.patching import (  # noqa: E402
    HEAD_AXES,
    HEAD_POS_AXES,
    RESID_AXES,
    attribution_patching,
    attribution_patching_from_cache,
    logit_diff,
    normalized_metric,
    patch_heads,
    patch_resid,
    to_dataframe,
)
from gated_interp.plotting.patching import patching_heatmap  # noqa: E402

N_PROMPTS, N_POS = 3, 6
GATE_ACTS = ("z_pre_gate", "gate_logits", "gate")


def head_activations(gate: str) -> tuple[str, ...]:
    return ("z", "q", "pattern") + (GATE_ACTS if gate != "none" else ())


@pytest.fixture(scope="module", params=GATES)
def setup(request, tmp_path_factory):
    """(model, clean tokens, corrupted tokens, metric, clean cache, gate) for one gate kind."""
    gate = request.param
    model, config, _ = make_tiny(tmp_path_factory.mktemp(f"patch_{gate}"), gate=gate, seed=3)
    model.eval()  # transformer_lens.patching insists on eval mode
    gen = torch.Generator().manual_seed(0)
    clean = torch.randint(0, config["vocab_size"], (N_PROMPTS, N_POS), generator=gen)
    corrupted = torch.randint(0, config["vocab_size"], (N_PROMPTS, N_POS), generator=gen)
    metric = partial(logit_diff, answer_tokens=[5, 6, 7], wrong_tokens=[8, 9, 10])
    _, clean_cache = model.run_with_cache(clean)
    return model, clean, corrupted, metric, clean_cache, gate


def run_metric(model, tokens, metric, attention_mask=None) -> float:
    with torch.no_grad():
        return metric(model(tokens, attention_mask=attention_mask)).item()


# ---- activation patching ------------------------------------------------------------------
def test_self_patching_gives_the_unpatched_metric(setup):
    model, clean, corrupted, metric, clean_cache, gate = setup
    _, corrupted_cache = model.run_with_cache(corrupted)
    for tokens, cache in ((clean, clean_cache), (corrupted, corrupted_cache)):
        expected = run_metric(model, tokens, metric)
        for act in head_activations(gate):
            for per_position in (False, True):
                got = patch_heads(model, tokens, cache, metric, act, per_position=per_position, progress=False)
                assert got.shape[:2] == (2, 4)
                torch.testing.assert_close(got, torch.full_like(got, expected), atol=1e-5, rtol=0)
        got = patch_resid(model, tokens, cache, metric, progress=False)
        assert got.shape == (2, N_POS)
        torch.testing.assert_close(got, torch.full_like(got, expected), atol=1e-5, rtol=0)


def test_batched_equals_unbatched(setup):
    model, _, corrupted, metric, clean_cache, gate = setup
    for act in head_activations(gate) + ("k",):
        one = patch_heads(model, corrupted, clean_cache, metric, act, per_position=True, batch_size=1, progress=False)
        many = patch_heads(model, corrupted, clean_cache, metric, act, per_position=True, batch_size=7, progress=False)
        torch.testing.assert_close(many, one, atol=1e-5, rtol=0)
    one = patch_resid(model, corrupted, clean_cache, metric, "resid_mid", batch_size=1, progress=False)
    many = patch_resid(model, corrupted, clean_cache, metric, "resid_mid", batch_size=100, progress=False)
    torch.testing.assert_close(many, one, atol=1e-5, rtol=0)


def test_matches_transformer_lens(setup):
    model, _, corrupted, metric, clean_cache, _ = setup
    pairs = [
        (tl_patching.get_act_patch_attn_head_out_all_pos, partial(patch_heads, activation="z"), None),
        (tl_patching.get_act_patch_resid_pre, patch_resid, None),
        (tl_patching.get_act_patch_attn_head_pattern_all_pos, partial(patch_heads, activation="pattern"), None),
        # TransformerLens orders per-position head results [layer, pos, head]; ours [layer, head, pos].
        (tl_patching.get_act_patch_attn_head_out_by_pos, partial(patch_heads, per_position=True), (0, 2, 1)),
        (tl_patching.get_act_patch_attn_head_q_all_pos, partial(patch_heads, activation="q"), None),
    ]
    for theirs, ours, permute in pairs:
        expected = theirs(model, corrupted, clean_cache, metric)
        expected = expected if permute is None else expected.permute(*permute)
        torch.testing.assert_close(
            ours(model, corrupted, clean_cache, metric, progress=False), expected, atol=1e-5, rtol=0
        )


def test_padding_mask_is_replicated(setup):
    model, clean, corrupted, metric, _, gate = setup
    mask = torch.ones_like(corrupted)
    mask[0, -2:] = 0
    metric_at_last_real = partial(logit_diff, answer_tokens=5, wrong_tokens=8, position=[N_POS - 3, -1, -1])
    _, clean_cache = model.run_with_cache(clean, attention_mask=mask)
    act = "gate" if gate != "none" else "z"
    kwargs = dict(activation=act, attention_mask=mask, progress=False)
    one = patch_heads(model, corrupted, clean_cache, metric_at_last_real, batch_size=1, **kwargs)
    many = patch_heads(model, corrupted, clean_cache, metric_at_last_real, **kwargs)
    torch.testing.assert_close(many, one, atol=1e-5, rtol=0)
    self_patch = patch_heads(model, clean, clean_cache, metric_at_last_real, **kwargs)
    expected = run_metric(model, clean, metric_at_last_real, mask)
    torch.testing.assert_close(self_patch, torch.full_like(self_patch, expected), atol=1e-5, rtol=0)


def test_clear_errors(setup):
    model, clean, corrupted, metric, clean_cache, gate = setup
    if gate == "none":
        with pytest.raises(ValueError, match="gated model"):
            patch_heads(model, corrupted, clean_cache, metric, "gate", progress=False)
    with pytest.raises(ValueError, match="does not match the corrupted tokens"):
        patch_heads(model, corrupted[:, :-1], clean_cache, metric, progress=False)
    with pytest.raises(ValueError, match="must return a scalar"):
        patch_heads(model, corrupted, clean_cache, lambda logits: logits[:, -1, 0], progress=False)
    with pytest.raises(ValueError, match="unknown activation"):
        patch_heads(model, corrupted, clean_cache, metric, "mlp_post", progress=False)
    with pytest.raises(ValueError, match="patch_resid"):
        patch_heads(model, corrupted, clean_cache, metric, "resid_pre", progress=False)
    with pytest.raises(KeyError, match="run_with_cache"):
        patch_heads(model, corrupted, {}, metric, progress=False)


# ---- attribution patching -----------------------------------------------------------------
def test_attribution_agrees_with_patching_to_first_order(setup, tmp_path):
    """Clean = corrupted + eps·noise: activation patching moves the metric by grad·(eps·noise)
    + O(eps²), so the attribution estimate's error relative to the effect must shrink like eps."""
    _, _, corrupted, metric, _, gate = setup
    model, _, _ = make_tiny(tmp_path / "f64", gate=gate, seed=3)
    # Less rounding noise under the O(eps²) remainder (RMSNorm and softmax still run in float32).
    model.to(torch.float64)
    acts = head_activations(gate) + ("resid_pre",)
    _, corrupted_cache = model.run_with_cache(corrupted)
    base = run_metric(model, corrupted, metric)
    gen = torch.Generator().manual_seed(1)
    noise = {name: torch.randn(t.shape, generator=gen, dtype=t.dtype) for name, t in corrupted_cache.items()}

    errors = []
    for eps in (1e-2, 1e-3):
        fake_clean = {name: t + eps * noise[name] for name, t in corrupted_cache.items()}
        estimates = attribution_patching_from_cache(model, corrupted, fake_clean, metric, acts, per_position=True)
        worst = 0.0
        for act in acts:
            if act == "resid_pre":
                exact = patch_resid(model, corrupted, fake_clean, metric, progress=False) - base
            else:
                exact = patch_heads(model, corrupted, fake_clean, metric, act, per_position=True, progress=False) - base
            assert estimates[act].shape == exact.shape
            scale = exact.abs().max()
            assert scale > 0, act
            worst = max(worst, ((estimates[act] - exact).abs().max() / scale).item())
        errors.append(worst)
    # Measured: ~5e-2 then ~5e-3 (worst activation): first-order agreement, remainder ∝ eps².
    assert errors[0] < 0.1 and errors[1] < 0.01, errors
    assert errors[1] < errors[0] / 4, errors


def test_attribution_patching_shapes_and_sums(setup):
    model, clean, corrupted, metric, _, gate = setup
    acts = head_activations(gate) + ("resid_pre",)
    totals = attribution_patching(model, clean, corrupted, metric, acts)
    by_pos = attribution_patching(model, clean, corrupted, metric, acts, per_position=True)
    for act in acts:
        if act == "resid_pre":
            assert totals[act].shape == (2, N_POS)
            torch.testing.assert_close(by_pos[act], totals[act])
        else:
            assert totals[act].shape == (2, 4) and by_pos[act].shape == (2, 4, N_POS)
            torch.testing.assert_close(by_pos[act].sum(-1), totals[act], atol=1e-5, rtol=1e-4)
        assert totals[act].abs().max() > 0, act
    same = attribution_patching(model, clean, clean, metric, acts)
    for act in acts:
        assert same[act].abs().max() == 0, act
    assert all(p.grad is None for p in model.parameters()), "attribution must not write weight grads"


# ---- metrics, results, plotting -----------------------------------------------------------
def test_logit_diff_and_normalized_metric():
    logits = torch.zeros(2, 3, 5)
    logits[0, -1, 1], logits[1, -1, 2], logits[1, 0, 2] = 3.0, 1.0, 10.0
    assert logit_diff(logits, [1, 2], [0, 0]).item() == pytest.approx(2.0)
    assert logit_diff(logits, 2, 0, position=[-1, 0]).item() == pytest.approx(5.0)
    with pytest.raises(ValueError, match="one per prompt"):
        logit_diff(logits, [1, 2, 3], 0)

    metric = partial(logit_diff, answer_tokens=[1, 2], wrong_tokens=[0, 0])
    normalized = normalized_metric(metric, clean_value=2.0, corrupted_value=-2.0)
    assert normalized(logits).item() == pytest.approx(1.0)
    assert normalized(torch.zeros(2, 3, 5) - 0).item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="equal"):
        normalized_metric(metric, 1.0, 1.0)


def test_to_dataframe_labels():
    result = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    df = to_dataframe(result, HEAD_POS_AXES, position_labels=["a", "b", "c", "d"])
    assert list(df.columns) == ["layer", "head", "pos", "token", "value"]
    row = df[(df["layer"] == 1) & (df["head"] == 2) & (df["pos"] == 3)].iloc[0]
    assert row.value == result[1, 2, 3].item() and row.token == "d"
    assert len(to_dataframe(result[:, :, 0], HEAD_AXES)) == 6
    assert list(to_dataframe(result[:, 0], RESID_AXES).columns) == ["layer", "pos", "value"]
    with pytest.raises(ValueError, match="names"):
        to_dataframe(result, HEAD_AXES)


def test_patching_heatmap():
    result = torch.tensor([[0.5, -2.0, 1.0], [0.0, 0.25, -0.5]])
    fig = patching_heatmap(result, x_labels=["<bos>", " the", "\n"], title="z patching")
    ax = fig.axes[0]
    assert ax.get_title() == "z patching" and ax.get_xlabel() == "position" and "layer" in ax.get_ylabel()
    # a leading space is marked
    assert [t.get_text() for t in ax.get_xticklabels()] == ["<bos> (0)", "\u00b7the (1)", "\\n (2)"]
    assert ax.images[0].get_clim() == (-2.0, 2.0)  # symmetric: white is 0
    assert len(fig.axes) == 2  # the colour bar
    fig = patching_heatmap(result, one_based_layers=False, annotate=True)
    assert fig.axes[0].get_xlabel() == "head"
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["0", "1"]
    with without_shape_checks(), pytest.raises(ValueError, match="2-D"):
        patching_heatmap(result[0])


def test_modules_use_public_helpers_of_other_modules():
    """No module imports another public module's private (`_name`) helpers: `patching/attribution.py`,
    `screen.py` and `atp_star.py` use `activation.py`'s public ones (private `_module`s are fine)."""
    import re
    from pathlib import Path

    import gated_interp

    package = Path(gated_interp.__file__).resolve().parent
    private = re.compile(r"^from gated_interp\.(?:\w+\.)*(?!_)\w+ import (.*)$")
    found = []
    for path in sorted(package.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            m = private.match(line)
            if m and any(n.strip().startswith("_") for n in m.group(1).split(",")):
                found.append(f"{path.relative_to(package)}:{number}: {line}")
    assert private.match("from gated_interp.patching.activation import _scalar")  # the pattern sees the habit
    assert found == [], "\n".join(found)
