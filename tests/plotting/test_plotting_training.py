"""The training-curves figure (`gated_interp.plotting.training_curves`) drawn from a training log."""

from __future__ import annotations

import subprocess
import sys

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from gated_interp.plotting import VARIANT_COLORS, training_curves  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def training_log(seeds=(None,), layers=(0, 1), steps=(0, 50, 100)) -> pd.DataFrame:
    """A log as `python -m gated_interp.train` writes it (a `seed` column when seeds are given)."""
    rows = []
    for seed in seeds:
        for step in steps:
            for index, variant in enumerate(("baseline", "gate_headwise")):
                row = {"step": step, "tokens": step * 1000, "variant": variant, "val_loss": 5.0 - index * 0.1}
                row.update({f"first_token_attention_L{layer}": 0.1 + 0.01 * layer for layer in layers})
                row.update({f"max_abs_resid_L{layer}": 10.0 * (1 + layer) for layer in layers})
                rows.append(row if seed is None else {**row, "seed": seed})
    return pd.DataFrame(rows)


def test_training_curves_draw_every_layer_and_the_loss_difference():
    fig = training_curves(
        training_log(layers=(0, 1, 2)), data="32 held-out windows of 128 tokens",
        reference=(1 / 128, "uniform attention over 128 tokens"), title="Training curves of the tiny models",
    )  # fmt: skip
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:4] == [
        "First-token attention, layer 0", "First-token attention, layer 1", "First-token attention, layer 2",
        "Held-out loss minus the baseline's",
    ]  # fmt: skip
    assert titles[4:7] == [f"Max |residual| after block {layer}" for layer in (0, 1, 2)]
    assert fig._suptitle.get_text() == (
        "Training curves of the tiny models, measured on 32 held-out windows of 128 tokens at every evaluation"
    )
    first = fig.axes[0]
    lines = {line.get_label(): line for line in first.get_lines()}
    assert lines["baseline"].get_color() == VARIANT_COLORS["baseline"]
    assert list(lines["baseline"].get_xdata()) == [0.0, 0.05, 0.1]  # millions of tokens
    assert lines["uniform attention over 128 tokens"].get_ydata()[0] == pytest.approx(1 / 128)
    assert first.get_ylim()[0] == 0
    legend_labels = [text.get_text() for text in fig.axes[-1].get_legend().get_texts()]
    assert legend_labels == ["baseline", "gate_headwise", "uniform attention over 128 tokens"]


def test_training_curves_draw_further_seeds_thin():
    fig = training_curves(training_log(seeds=(0, 1)))
    lines = fig.axes[0].get_lines()
    labelled = [line.get_label() for line in lines if not line.get_label().startswith("_")]  # "_...": no legend
    assert labelled == ["baseline, seed 0", "gate_headwise, seed 0", "seed 1"] and len(lines) == 4
    assert lines[0].get_linewidth() > lines[2].get_linewidth()
    assert "the held-out windows" in fig._suptitle.get_text()


def test_training_curves_refuse_a_log_without_layer_columns():
    with pytest.raises(ValueError, match="first_token_attention_L"):
        training_curves(pd.DataFrame({"step": [0], "tokens": [0], "variant": ["baseline"], "val_loss": [5.0]}))


def test_loss_difference_has_no_gap_where_only_one_variant_was_evaluated():
    """A run stopped by --max-minutes logs an evaluation at the step it stopped; its loss curve
    minus the baseline's must skip that step, not break the line there."""

    def row(step, variant, loss):
        return {
            "step": step, "tokens": step * 10, "variant": variant, "val_loss": loss,
            "first_token_attention_L0": 0.1, "max_abs_resid_L0": 1.0,
        }  # fmt: skip

    steps = [0, 50, 100, 150]
    log = pd.DataFrame(
        [row(s, "baseline", 5.0 - s / 100) for s in steps]
        + [row(s, "gate_headwise", 4.9 - s / 100) for s in [0, 50, 51, 100, 150]]
    )
    fig = training_curves(log, reference=(1 / 8, "uniform attention over 8 tokens"))
    ax_loss = fig.axes[1]  # the first row's last column: the loss difference panel
    assert ax_loss.get_title() == "Held-out loss minus the baseline's"
    gated_line = ax_loss.get_lines()[1]
    assert list(gated_line.get_xdata()) == [s * 10 / 1e6 for s in steps]
    assert gated_line.get_ydata() == pytest.approx([-0.1] * 4)


@pytest.mark.slow
def test_importing_plotting_leaves_the_matplotlib_backend_alone():
    code = (
        "import matplotlib; matplotlib.use('svg'); import gated_interp.plotting.training; "
        "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def hybrid_log(variants=("hybrid_gated", "hybrid_ungated"), steps=(0, 50, 100)) -> pd.DataFrame:
    """A Qwen3.5-layout log: first-token attention on the full-attention layer 3 only, max
    |residual| after every block; every value different, so each panel's data can be told apart."""
    rows = []
    for step in steps:
        for index, variant in enumerate(variants):
            row = {
                "step": step,
                "tokens": step * 1000,
                "variant": variant,
                "val_loss": 5.0 - index * 0.25 - step / 1000,
            }
            row["first_token_attention_L3"] = 0.05 + 0.1 * index + step / 10_000
            row.update({f"max_abs_resid_L{layer}": 1.0 + layer + 10 * index + step / 100 for layer in range(4)})
            rows.append(row)
    return pd.DataFrame(rows)


def test_training_curves_of_a_hybrid_log_note_the_linear_layers_and_draw_every_residual():
    log = hybrid_log()
    fig = training_curves(log, reference=(1 / 128, "uniform attention over 128 tokens"))
    top, bottom = fig.axes[:5], fig.axes[5:]  # 2 x (4 layers + the loss/legend column), row by row
    for layer in (0, 1, 2):  # linear attention: a note, no curves, no axes
        assert not top[layer].axison and top[layer].get_lines() == []
        assert [t.get_text() for t in top[layer].texts] == [f"layer {layer}: linear attention,\nno attention pattern"]
    assert top[3].axison and top[3].get_title() == "First-token attention, layer 3"
    lines = {line.get_label(): line for line in top[3].get_lines()}
    for variant in ("hybrid_gated", "hybrid_ungated"):
        rows = log[log["variant"] == variant]
        assert list(lines[variant].get_ydata()) == pytest.approx(list(rows["first_token_attention_L3"]))
    assert top[3].get_ylabel() == "mean attention to position 0" and top[3].get_ylim()[0] == 0
    for layer in range(4):
        assert bottom[layer].get_title() == f"Max |residual| after block {layer}"
        drawn = [list(line.get_ydata()) for line in bottom[layer].get_lines()]
        expected = [
            list(log[log["variant"] == v][f"max_abs_resid_L{layer}"]) for v in ("hybrid_gated", "hybrid_ungated")
        ]
        assert drawn == expected
    legend_labels = [text.get_text() for text in bottom[-1].get_legend().get_texts()]
    assert legend_labels == ["hybrid_gated", "hybrid_ungated", "uniform attention over 128 tokens"]


def test_the_loss_panel_of_a_hybrid_log_is_relative_to_the_ungated_twin():
    ax_loss = training_curves(hybrid_log()).axes[4]
    assert ax_loss.get_title() == "Held-out loss minus\nhybrid_ungated's"
    gated, ungated = (line.get_ydata() for line in ax_loss.get_lines()[:2])
    assert list(gated) == pytest.approx([0.25] * 3) and list(ungated) == pytest.approx([0.0] * 3)

    ax_loss = training_curves(hybrid_log(), reference_variant="hybrid_gated").axes[4]
    assert ax_loss.get_title() == "Held-out loss minus\nhybrid_gated's"
    assert list(ax_loss.get_lines()[1].get_ydata()) == pytest.approx([-0.25] * 3)

    ax_loss = training_curves(hybrid_log(variants=("hybrid_gated",))).axes[4]  # nothing to compare with
    assert ax_loss.get_title() == "Held-out loss (no reference variant in the log)"
    (zero_line,) = ax_loss.get_lines()  # only the zero line
    assert list(zero_line.get_ydata()) == [0, 0]
