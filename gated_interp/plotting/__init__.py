"""Figures of what `gated_interp.analysis` measures; nothing here computes a measurement.

Each function takes tensors or DataFrames and returns a matplotlib `Figure` (labelled axes,
titles, colour bars). Layers and heads are numbered from 0 everywhere, as in hook names and
TransformerLens' `L{layer}H{head}` (the paper's "Layer 28" is layer 27 here). Panels meant to be
compared share one colour scale; a diverging map centred on 0 is used only for signed data; every
figure takes a `data` argument naming what was measured (prompt or data set, number of sequences).

    layers = demo_layers(model.cfg.n_layers)                  # (0, 6, 20, 27) for 28 layers
    maps = analysis.head_averaged_patterns(cache, layers)
    fig = attention_maps(maps, model.to_str_tokens(prompt), layers=layers)
    save_demo_figure(fig, "figures", "gate_headwise")
"""

from gated_interp.plotting._common import VARIANT_COLORS, shared_scale, variant_style
from gated_interp.plotting.attention_maps import PAPER_DEMO_LAYERS, attention_maps, demo_layers, save_demo_figure
from gated_interp.plotting.gate_attribution import gate_contributors
from gated_interp.plotting.gates import gate_heatmap, gate_histograms
from gated_interp.plotting.intervals import interval_bars
from gated_interp.plotting.layers import layer_colorbar, plot_by_layer
from gated_interp.plotting.patching import patching_heatmap, patching_heatmaps
from gated_interp.plotting.training import training_curves

__all__ = [
    "PAPER_DEMO_LAYERS",
    "VARIANT_COLORS",
    "attention_maps",
    "demo_layers",
    "gate_contributors",
    "gate_heatmap",
    "gate_histograms",
    "interval_bars",
    "layer_colorbar",
    "patching_heatmap",
    "patching_heatmaps",
    "plot_by_layer",
    "save_demo_figure",
    "shared_scale",
    "training_curves",
    "variant_style",
]
