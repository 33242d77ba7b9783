"""Figures of what `gated_interp.analysis` measures; nothing here computes a measurement.

Each function takes tensors or DataFrames and returns a matplotlib `Figure` (labelled axes,
titles, colour bars). Data are indexed by 0-based layers; figures show layers 1-based, as the
paper does ("Layer 28" is layer index 27).

    maps = analysis.head_averaged_patterns(cache, demo_layers(n_layers, zero_based=True))
    fig = attention_maps(maps, model.to_str_tokens(prompt), layers=demo_layers(n_layers, zero_based=True))
    save_demo_figure(fig, "figures", "gate_headwise")
"""

from gated_interp.plotting.attention_maps import PAPER_DEMO_LAYERS, attention_maps, demo_layers, save_demo_figure
from gated_interp.plotting.gate_attribution import gate_contributors
from gated_interp.plotting.gates import gate_heatmap, gate_histograms
from gated_interp.plotting.intervals import interval_bars
from gated_interp.plotting.layers import plot_by_layer
from gated_interp.plotting.patching import patching_heatmap

__all__ = [
    "PAPER_DEMO_LAYERS",
    "attention_maps",
    "demo_layers",
    "gate_contributors",
    "gate_heatmap",
    "gate_histograms",
    "interval_bars",
    "patching_heatmap",
    "plot_by_layer",
    "save_demo_figure",
]
