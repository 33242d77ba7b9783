"""Plots return Figures with the titles, labels, colour bars and file names asked for."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import make_tiny, random_tokens  # noqa: E402

from gated_interp.analysis import first_token_attention_by_layer, gate_values, head_averaged_patterns  # noqa: E402
from gated_interp.plotting import (  # noqa: E402
    PAPER_DEMO_LAYERS,
    VARIANT_COLORS,
    attention_maps,
    demo_layers,
    gate_heatmap,
    gate_histograms,
    layer_colorbar,
    patching_heatmap,
    patching_heatmaps,
    plot_by_layer,
    save_demo_figure,
    shared_scale,
    variant_style,
)

# A wrong shape is a ValueError from our own check, or a TypeError when pytest runs with
# jaxtyping's type checking on (--jaxtyping-packages), which stops it at the signature.
SHAPE_ERRORS = (ValueError, TypeError)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def heatmap_axes(fig):
    """Subplots that hold an image (colour bars are axes too, without images)."""
    return [ax for ax in fig.axes if ax.images]


def test_demo_layers_are_zero_based():
    assert demo_layers(28) == PAPER_DEMO_LAYERS == (0, 6, 20, 27)  # the paper's "Layer 1, 7, 21, 28"
    assert demo_layers(28, zero_based=False) == (1, 7, 21, 28)
    assert demo_layers(4) == (0, 1, 2, 3)
    assert demo_layers(2) == (0, 1)
    assert demo_layers(6) == (0, 1, 4, 5)
    for n in range(5, 60):
        chosen = demo_layers(n)
        assert len(set(chosen)) == 4 and chosen[0] == 0 and chosen[-1] == n - 1 and list(chosen) == sorted(chosen)
    with pytest.raises(ValueError):
        demo_layers(0)


def test_attention_maps_demo_figure(tmp_path):
    tokens = ["Sparse", " gating", " mechanism", "\n"]
    maps = {layer: torch.rand(4, 4).tril() * (i + 1) / 4 for i, layer in enumerate(demo_layers(28))}
    fig = attention_maps(maps, tokens, title="gate_headwise", data="demo prompt (4 tokens)")
    axes = heatmap_axes(fig)
    assert [ax.get_title() for ax in axes] == ["layer 0", "layer 6", "layer 20", "layer 27"]
    assert len(fig.axes) == 5  # four maps, one colour bar for all of them
    top = max(float(m.max()) for m in maps.values())
    assert all(ax.images[0].get_clim() == (0.0, top) for ax in axes)  # one scale: the panels compare
    boxes = [ax.get_position() for ax in axes]  # a 2x2 grid: two columns, two rows
    assert len({round(b.x0, 2) for b in boxes}) == 2 and len({round(b.y0, 2) for b in boxes}) == 2
    labels = ["Sparse", "\u00b7gating", "\u00b7mechanism", "\\n"]  # leading spaces marked
    for ax in axes:
        assert [t.get_text() for t in ax.get_xticklabels()] == labels
        assert [t.get_text() for t in ax.get_yticklabels()] == labels
        assert all(t.get_rotation() == 90 for t in ax.get_xticklabels())
        assert ax.get_xlabel() == "Key token" and ax.get_ylabel() == "Query token"
        assert ax.images[0].get_cmap().name == "viridis"
    assert fig._suptitle.get_text() == "gate_headwise\ndemo prompt (4 tokens)"
    path = save_demo_figure(fig, tmp_path / "figs", "gate_headwise")
    assert path == tmp_path / "figs" / "gate_headwise_selected_layer_attention_maps.png"
    assert path.stat().st_size > 0


def test_attention_maps_from_a_model_run(tmp_path):
    model, _, _ = make_tiny(tmp_path, gate="headwise")
    tokens = random_tokens(model, 2, 5)
    mask = torch.tensor([[1] * 5, [1] * 3 + [0] * 2])
    _, cache = model.run_with_cache(tokens, attention_mask=mask)
    layers = demo_layers(model.cfg.n_layers, zero_based=True)
    maps = head_averaged_patterns(cache, layers, batch_index=1, attention_mask=mask)
    fig = attention_maps(maps, ["a", "b", "c"], layers=layers)
    assert [ax.get_title() for ax in heatmap_axes(fig)] == ["layer 0", "layer 1"]
    assert "'abc' (3 tokens, 1 sequence)" in fig._suptitle.get_text()  # names its data by default
    with pytest.raises(ValueError, match="does not match 4 tokens"):
        attention_maps(maps, ["a", "b", "c", "d"], layers=layers)
    with pytest.raises(ValueError, match="layer indices"):
        attention_maps(maps, ["a", "b", "c"], layers=[0])


def test_plot_by_layer(tmp_path):
    values = {"baseline": torch.tensor([0.1, 0.5, 0.8]), "gate_headwise": torch.tensor([0.05, 0.02, 0.04])}
    fig = plot_by_layer(values, ylabel="Attention to first token", title="First-token attention by layer")
    (ax,) = fig.axes
    assert ax.get_title() == "First-token attention by layer"
    assert ax.get_ylabel() == "Attention to first token" and ax.get_xlabel() == "Layer"
    assert [line.get_label() for line in ax.get_lines()] == ["baseline", "gate_headwise"]
    np.testing.assert_array_equal(ax.get_lines()[0].get_xdata(), [0, 1, 2])
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), [0.1, 0.5, 0.8], rtol=1e-6)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["baseline", "gate_headwise"]
    fig.savefig(tmp_path / "by_layer.png")
    fig.canvas.draw()
    legend_box = ax.get_legend().get_window_extent()
    assert legend_box.x0 >= ax.get_window_extent().x1  # outside the axes: covers no data
    log_fig = plot_by_layer({"baseline": torch.tensor([0.5, 10.0, 1000.0])}, "max |h|", "M-Act", log_scale=True)
    log_ax = log_fig.axes[0]
    assert log_ax.get_yscale() == "log"
    log_fig.canvas.draw()
    shown = [t.get_text() for t in log_ax.get_yticklabels() if t.get_text()]
    assert {"1", "10", "100", "1000"} <= set(shown) and not any("10^" in t or "$" in t for t in shown)
    narrow = plot_by_layer(
        {"baseline": torch.tensor([28.0, 31.0]), "gated": torch.tensor([3.4, 5.3])}, "max", "t", log_scale=True
    )
    narrow.canvas.draw()
    shown = [t.get_text() for t in narrow.axes[0].get_yticklabels() if t.get_text()]
    assert {"5", "10", "20", "30"} <= set(shown)  # a baseline near 30 can be read off the axis
    with pytest.raises(SHAPE_ERRORS):
        plot_by_layer({"x": torch.zeros(2, 3)}, "y", "t")


def test_plot_by_layer_draws_from_zero_with_a_reference_level():
    """Attention shares far from 0 are drawn from 0 (a 3x gap must look like one), and the uniform
    level is a labelled dashed line in the legend."""
    values = {"baseline": torch.tensor([0.25, 0.46, 0.66]), "gate_headwise": torch.tensor([0.23, 0.24, 0.39])}
    fig = plot_by_layer(values, "F-Attn", "by layer", reference=(0.18, "uniform attention over 19 tokens"))
    (ax,) = fig.axes
    assert ax.get_ylim()[0] == 0 and ax.get_ylim()[1] >= 0.66
    reference = ax.get_lines()[-1]
    assert reference.get_linestyle() == "--" and list(reference.get_ydata()) == [0.18, 0.18]
    assert [t.get_text() for t in ax.get_legend().get_texts()][-1] == "uniform attention over 19 tokens"
    signed = plot_by_layer({"delta": torch.tensor([-0.2, 0.1])}, "delta loss", "signed").axes[0]
    assert signed.get_ylim()[0] < -0.2  # values below 0 keep matplotlib's range


def test_plot_by_layer_draws_a_hybrid_from_zero_and_keeps_its_colour():
    """A hybrid model's attention curve is NaN on its linear-attention layers (as the analyses return
    it): the NaN layers are skipped, the axis still starts at 0, and each bundled variant of the five
    keeps a colour of its own."""
    values = {
        "hybrid_gated": torch.tensor([float("nan"), float("nan"), float("nan"), 0.03]),  # first: min() sees its NaN
        "gate_headwise": torch.tensor([0.06, 0.04, 0.04, 0.03]),
        "hybrid_ungated": torch.tensor([float("nan"), float("nan"), float("nan"), 0.05]),
    }
    (ax,) = plot_by_layer(values, "F-Attn", "by layer", reference=(0.04, "uniform")).axes
    assert ax.get_ylim()[0] == 0
    colors = {line.get_label(): line.get_color() for line in ax.get_lines()}
    assert colors["hybrid_gated"] == VARIANT_COLORS["hybrid_gated"] != VARIANT_COLORS["gate_headwise"]
    assert len(set(VARIANT_COLORS.values())) == len(VARIANT_COLORS)


def test_plot_by_layer_from_analysis(tmp_path):
    """The curve drawn is the analysis' value for each 0-based layer: the attention of queries
    >= 1 to token 0, averaged over heads, read here straight from the cached patterns."""
    model, _, _ = make_tiny(tmp_path, gate="none")
    _, cache = model.run_with_cache(random_tokens(model, 1, 5))
    fig = plot_by_layer({"baseline": first_token_attention_by_layer(cache)}, "F-Attn", "F-Attn by layer")
    (ax,) = fig.axes
    (line,) = ax.get_lines()
    expected = [float(cache["pattern", layer][0, :, 1:, 0].mean()) for layer in range(model.cfg.n_layers)]
    np.testing.assert_array_equal(line.get_xdata(), np.arange(model.cfg.n_layers))
    np.testing.assert_allclose(line.get_ydata(), expected, rtol=1e-5)
    assert line.get_label() == "baseline" and line.get_color() == VARIANT_COLORS["baseline"]
    assert ax.get_title() == "F-Attn by layer" and ax.get_ylabel() == "F-Attn" and ax.get_xlabel() == "Layer"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["baseline"]


def test_gate_histograms_from_dicts_and_frames(tmp_path):
    nested = {
        "gate_headwise": {0: torch.rand(100), 3: torch.rand(100)},
        "gate_elementwise": {0: torch.rand(100) * 0.2, 3: torch.rand(100) * 0.2},
    }
    fig = gate_histograms(nested)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [
        "gate_headwise, layer 0",
        "gate_headwise, layer 3",
        "gate_elementwise, layer 0",
        "gate_elementwise, layer 3",
    ]
    assert all(ax.get_xlabel() == "Gate score" and ax.get_ylabel() == "Density" for ax in fig.axes)
    assert fig._suptitle.get_text() == "Gate score distribution"
    fig.savefig(tmp_path / "hist.png")

    frame = pd.DataFrame({"variant": ["a"] * 4 + ["b"] * 2, "gate": np.linspace(0, 1, 6)})
    fig = gate_histograms(frame, title="pooled")
    assert [ax.get_title() for ax in fig.axes] == ["a, all layers", "b, all layers"]
    with pytest.raises(ValueError, match="'variant', 'gate'"):
        gate_histograms(pd.DataFrame({"gate": [0.1]}))


def test_gate_plots_from_a_model_run(tmp_path):
    from gated_interp.analysis import mean_gate_by_head

    model, _, _ = make_tiny(tmp_path, gate="elementwise")
    _, cache = model.run_with_cache(random_tokens(model, 2, 5))
    fig = gate_histograms({"gate_elementwise": {layer: gate_values(cache, layer) for layer in range(2)}})
    assert [ax.get_title() for ax in fig.axes] == ["gate_elementwise, layer 0", "gate_elementwise, layer 1"]
    for layer, ax in enumerate(fig.axes):  # the bars are that layer's gate-score density, 50 bins over [0, 1]
        scores = cache["gate", layer].flatten().numpy()
        expected, _ = np.histogram(scores, bins=np.linspace(0.0, 1.0, 51), density=True)
        np.testing.assert_allclose([bar.get_height() for bar in ax.patches], expected, rtol=1e-6)
    mean_gate = mean_gate_by_head(cache)
    heat = gate_heatmap(mean_gate, title="Mean gate, elementwise")
    ax = heat.axes[0]
    expected_mean = cache["gate", 0].mean((0, 1, 3)), cache["gate", 1].mean((0, 1, 3))  # [head] per layer
    np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), torch.stack(expected_mean).numpy(), rtol=1e-5)
    assert ax.get_title() == "Mean gate, elementwise"
    assert ax.get_xlabel() == "Head" and ax.get_ylabel() == "Layer"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "1"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "2", "3"]
    assert len(heat.axes) == 2 and heat.axes[1].get_ylabel() == "mean gate score"  # the colour bar
    assert len(ax.texts) == 8  # 2 x 4 cells, annotated
    heat.savefig(tmp_path / "heat.png")
    with pytest.raises(SHAPE_ERRORS):
        gate_heatmap(torch.zeros(3))


def test_opened_gate_curves_keep_the_variant_colour_with_another_line_style():
    values = {
        "baseline": torch.tensor([0.1, 0.2]),
        "gate_headwise": torch.tensor([0.05, 0.04]),
        "gate_headwise, gates = 1": torch.tensor([0.06, 0.08]),
    }
    low, high = torch.tensor([0.0, 0.1]), torch.tensor([0.2, 0.3])
    fig = plot_by_layer(values, "F-Attn", "opened", data="16 held-out windows", errors={"baseline": (low, high)})
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}
    assert lines["gate_headwise"].get_color() == lines["gate_headwise, gates = 1"].get_color()
    assert lines["gate_headwise"].get_color() == VARIANT_COLORS["gate_headwise"]
    assert lines["gate_headwise"].get_linestyle() == "-" and lines["gate_headwise, gates = 1"].get_linestyle() == "--"
    assert lines["baseline"].get_color() != lines["gate_headwise"].get_color()
    assert ax.get_title() == "opened\n16 held-out windows"
    assert len(ax.collections) == 1  # the baseline's error bars
    assert variant_style("something else", 3) == {"color": "C3", "linestyle": "-"}


def test_shared_scale_diverges_only_for_signed_data():
    low, high, cmap, diverging = shared_scale([torch.tensor([-0.2, 0.1]), torch.tensor([0.7])])
    assert (low, high, cmap, diverging) == (pytest.approx(-0.7), pytest.approx(0.7), "RdBu", True)
    low, high, cmap, diverging = shared_scale([torch.tensor([-3.0, -1.0]), torch.tensor([-0.5])])
    assert (low, high, diverging) == (-3.0, 0.0, False) and cmap != "RdBu"
    low, high, cmap, diverging = shared_scale([torch.tensor([0.0, 0.012]), torch.tensor([0.72])])
    assert (low, high, diverging) == (0.0, pytest.approx(0.72), False) and cmap != "RdBu"


def test_patching_heatmaps_share_one_scale_and_annotations_contrast():
    small = torch.tensor([[0.0, 0.012], [0.001, 0.0]])
    large = torch.tensor([[0.72, 0.0], [0.1, 0.3]])
    fig = patching_heatmaps({"gate": small, "z": large}, title="patching", data="32 prompt pairs")
    axes = heatmap_axes(fig)
    assert [ax.images[0].get_clim() for ax in axes] == [(0.0, pytest.approx(0.72))] * 2
    assert all(ax.images[0].get_cmap().name == "viridis" for ax in axes)  # one-signed: sequential
    assert len(fig.axes) == 3  # two panels, one colour bar
    assert fig._suptitle.get_text() == "patching\n32 prompt pairs"
    image = axes[1].images[0]
    for text in axes[1].texts:  # black on light cells, white on dark ones
        value = float(text.get_text())
        red, green, blue, _ = image.cmap(image.norm(value))
        assert text.get_color() == ("black" if 0.2126 * red + 0.7152 * green + 0.0722 * blue > 0.5 else "white")
    assert {t.get_color() for t in axes[1].texts} == {"black", "white"}
    signed = patching_heatmap(torch.tensor([[-1.0, 0.5]]))
    assert signed.axes[0].images[0].get_cmap().name == "RdBu"
    assert [t.get_text() for t in signed.axes[0].get_yticklabels()] == ["0"]


def test_crowded_tick_labels_thin_out():
    tokens = [f"t{i}" for i in range(100)]
    fig = patching_heatmap(torch.rand(2, 100), x_labels=tokens)
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert 10 <= len(labels) <= 24 and labels[0] == "t0 (0)" and labels[1] == "t5 (5)"
    maps = {0: torch.rand(60, 60)}
    fig = attention_maps(maps, tokens[:60])
    assert len(heatmap_axes(fig)[0].get_yticklabels()) <= 24


def test_layer_colorbar_is_discrete():
    fig, ax = plt.subplots()
    cmap, norm = layer_colorbar(fig, ax, 4)
    points = ax.scatter([0, 1, 2, 3], [0, 1, 2, 3], c=[0, 1, 2, 3], cmap=cmap, norm=norm)
    colors = points.to_rgba(np.array([0, 1, 2, 3]))
    assert len({tuple(c) for c in colors}) == 4 and cmap.N == 4
    colorbar_ax = fig.axes[1]
    assert [t.get_text() for t in colorbar_ax.get_yticklabels()] == ["0", "1", "2", "3"]
