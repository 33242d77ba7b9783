"""Measurements of attention sinks, massive activations and gate scores, and interventions.

Every measurement reads a cache from `model.run_with_cache(tokens, attention_mask=mask)` (or a
plain `{hook_name: tensor}` dict) plus, where padding matters, that `attention_mask [batch, pos]`,
and returns tensors or DataFrames; drawing them is `gated_interp.plotting`'s job.

    logits, cache = model.run_with_cache(tokens, attention_mask=mask)
    first_token_attention(cache, mask)          # [layer, head]
    sink_rate(cache, eps=0.3, attention_mask=mask)
    massive_activations(cache, mask)            # DataFrame, one row per layer
    gate_stats(cache, mask)                     # DataFrame, one row per (layer, head)
    gate_attribution(cache, layer=2, head=1, pos=0)  # what drives that gate logit
    head_quietness(cache, mask)                 # DataFrame: quiet through a sink, the gate, or active
    compare_variants({"baseline": m0, "gate_headwise": m1}, prompts, n_boot=1000)  # with 95% intervals
    linear_attention_stats(cache, mask, n_boot=1000)  # Gated DeltaNet heads: decay, half-life, beta, silu(z)

On a hybrid model (Qwen3.5, Qwen3-Next) the attention and gate measurements run over its
full-attention layers with their own layer indices (`[layer, head]` tensors have NaN rows for the
linear-attention layers, tables rows for the layers measured), massive activations over every
layer, and `linear_attention_stats` over the linear-attention layers; asking for a quantity on a
layer it does not apply to raises, naming the layers it does apply to.

At long context a full cache does not fit (every layer's `[batch, head, pos, pos]` pattern):
`analysis.streaming` computes the same numbers from a model and tokens, one layer at a time and
without the pattern (`streaming.first_token_attention(model, tokens)`, `measure(model, tokens)`).
`compare_variants` streams. Both paths compute each quantity with the one function of
`analysis.reductions`, under one name: first_token_attention (the paper's F-Attn), sink_rate,
max_abs_resid (the paper's M-Act), mean_gate, loss (and gate_frac_below_0.1, ...).

Layers and heads are 0-based throughout.
"""

from gated_interp.analysis import bootstrap, streaming
from gated_interp.analysis.bootstrap import bootstrap_ci
from gated_interp.analysis.compare import compare_variants, measure_variant
from gated_interp.analysis.gate_attribution import gate_attribution, gate_attribution_stack, top_gate_contributors
from gated_interp.analysis.gates import gate_stats, gate_values, mean_gate_by_head, mean_gate_score
from gated_interp.analysis.interventions import (
    ablation_effects,
    fix_gates,
    fix_linear_gates,
    intervene,
    mean_ablate_heads,
    mean_gates,
    mean_linear_gates,
    open_gates,
    open_linear_gates,
    remove_sink,
    zero_ablate_heads,
)
from gated_interp.analysis.linear_attention import linear_attention_stats
from gated_interp.analysis.massive import massive_activations, max_abs_resid, max_abs_resid_by_layer
from gated_interp.analysis.measurement import Measurement
from gated_interp.analysis.quietness import head_quietness
from gated_interp.analysis.sinks import (
    first_token_attention,
    first_token_attention_by_layer,
    head_averaged_patterns,
    key_importance,
    sink_rate,
    uniform_first_token_attention,
)
from gated_interp.analysis.streaming import measure

__all__ = [
    "Measurement",
    "ablation_effects",
    "bootstrap",
    "bootstrap_ci",
    "compare_variants",
    "first_token_attention",
    "first_token_attention_by_layer",
    "fix_gates",
    "fix_linear_gates",
    "gate_attribution",
    "gate_attribution_stack",
    "gate_stats",
    "gate_values",
    "head_averaged_patterns",
    "head_quietness",
    "intervene",
    "key_importance",
    "linear_attention_stats",
    "massive_activations",
    "max_abs_resid",
    "max_abs_resid_by_layer",
    "mean_ablate_heads",
    "mean_gate_by_head",
    "mean_gate_score",
    "mean_gates",
    "mean_linear_gates",
    "measure",
    "measure_variant",
    "open_gates",
    "open_linear_gates",
    "remove_sink",
    "sink_rate",
    "streaming",
    "top_gate_contributors",
    "uniform_first_token_attention",
    "zero_ablate_heads",
]
