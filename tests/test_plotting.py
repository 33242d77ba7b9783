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
    attention_maps,
    demo_layers,
    gate_heatmap,
    gate_histograms,
    plot_by_layer,
    save_demo_figure,
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


def test_demo_layers():
    assert demo_layers(28) == (1, 7, 21, 28)
    assert demo_layers(28, zero_based=True) == (0, 6, 20, 27)
    assert demo_layers(4) == (1, 2, 3, 4)
    assert demo_layers(2) == (1, 2)
    assert demo_layers(6) == (1, 2, 5, 6)
    for n in range(5, 60):
        chosen = demo_layers(n)
        assert len(set(chosen)) == 4 and chosen[0] == 1 and chosen[-1] == n and list(chosen) == sorted(chosen)
    with pytest.raises(ValueError):
        demo_layers(0)


def test_attention_maps_demo_figure(tmp_path):
    tokens = ["Sparse", " gating", " mechanism", "\n"]
    maps = {layer: torch.rand(4, 4).tril() for layer in demo_layers(28, zero_based=True)}
    fig = attention_maps(maps, tokens, title="gate_headwise")
    axes = heatmap_axes(fig)
    assert [ax.get_title() for ax in axes] == ["Layer 1", "Layer 7", "Layer 21", "Layer 28"]
    assert len(fig.axes) == 8  # four maps, four colour bars
    boxes = [ax.get_position() for ax in axes]  # a 2x2 grid: two columns, two rows
    assert len({round(b.x0, 2) for b in boxes}) == 2 and len({round(b.y0, 2) for b in boxes}) == 2
    labels = ["Sparse", " gating", " mechanism", "\\n"]
    for ax in axes:
        assert [t.get_text() for t in ax.get_xticklabels()] == labels
        assert [t.get_text() for t in ax.get_yticklabels()] == labels
        assert all(t.get_rotation() == 90 for t in ax.get_xticklabels())
        assert ax.get_xlabel() == "Key token" and ax.get_ylabel() == "Query token"
        assert ax.images[0].get_cmap().name == "viridis"
    assert fig._suptitle.get_text() == "gate_headwise"
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
    assert [ax.get_title() for ax in heatmap_axes(fig)] == ["Layer 1", "Layer 2"]
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
    np.testing.assert_array_equal(ax.get_lines()[0].get_xdata(), [1, 2, 3])
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), [0.1, 0.5, 0.8], rtol=1e-6)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["baseline", "gate_headwise"]
    fig.savefig(tmp_path / "by_layer.png")
    log_fig = plot_by_layer({"baseline": torch.tensor([10.0, 1000.0])}, "max |h|", "M-Act", log_scale=True)
    assert log_fig.axes[0].get_yscale() == "log"
    with pytest.raises(SHAPE_ERRORS):
        plot_by_layer({"x": torch.zeros(2, 3)}, "y", "t")


def test_plot_by_layer_from_analysis(tmp_path):
    model, _, _ = make_tiny(tmp_path, gate="none")
    _, cache = model.run_with_cache(random_tokens(model, 1, 5))
    fig = plot_by_layer({"baseline": first_token_attention_by_layer(cache)}, "F-Attn", "F-Attn by layer")
    assert len(fig.axes[0].get_lines()[0].get_xdata()) == model.cfg.n_layers


def test_gate_histograms_from_dicts_and_frames(tmp_path):
    nested = {
        "gate_headwise": {0: torch.rand(100), 3: torch.rand(100)},
        "gate_elementwise": {0: torch.rand(100) * 0.2, 3: torch.rand(100) * 0.2},
    }
    fig = gate_histograms(nested)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [
        "gate_headwise, layer 1",
        "gate_headwise, layer 4",
        "gate_elementwise, layer 1",
        "gate_elementwise, layer 4",
    ]
    assert all(ax.get_xlabel() == "Gate score" and ax.get_ylabel() == "Count" for ax in fig.axes)
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
    assert len(fig.axes) == 2
    heat = gate_heatmap(mean_gate_by_head(cache), title="Mean gate, elementwise")
    ax = heat.axes[0]
    assert ax.get_title() == "Mean gate, elementwise"
    assert ax.get_xlabel() == "Head" and ax.get_ylabel() == "Layer"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["1", "2"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "2", "3"]
    assert len(heat.axes) == 2 and heat.axes[1].get_ylabel() == "mean gate score"  # the colour bar
    heat.savefig(tmp_path / "heat.png")
    with pytest.raises(SHAPE_ERRORS):
        gate_heatmap(torch.zeros(3))
