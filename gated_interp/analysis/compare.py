"""Side-by-side sink, activation and gate measurements of several model variants."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd
import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm

from gated_interp.analysis._inputs import Prompts, as_batches, n_sequences
from gated_interp.analysis.gates import mean_gate_score
from gated_interp.analysis.massive import max_activation_by_layer
from gated_interp.analysis.sinks import first_token_attention, sink_rate

COLUMNS = ("f_attn", "sink_rate", "m_act", "mean_gate", "loss")


def _keep(name: str) -> bool:
    # Only what the measurements read, so that large models' caches stay small.
    return name.endswith(("hook_pattern", "hook_resid_post", "attn.hook_gate"))


@torch.no_grad()
def measure_variant(
    model: Any,
    prompts: Prompts,
    batch_size: int | None = 8,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    eps: float = 0.3,
    progress: bool = True,
    desc: str = "",
) -> dict[str, float]:
    """F-Attn, sink rate, M-Act, mean gate score (NaN if ungated) and loss of one model on the
    prompts, pooled over batches exactly as one big batch would give them."""
    gated = model.cfg.gate != "none"
    sums = {"f_attn": 0.0, "sink_rate": 0.0, "mean_gate": 0.0, "loss": 0.0}
    counts = {"f_attn": 0.0, "sink_rate": 0.0, "mean_gate": 0.0, "loss": 0.0}
    layer_max: Tensor | None = None
    total = math.ceil(n_sequences(prompts) / batch_size) if batch_size else 1
    for tokens, mask in tqdm(
        as_batches(model, prompts, batch_size, attention_mask), total=total, desc=desc, disable=not progress
    ):
        if tokens.shape[1] < 2:
            raise ValueError("compare_variants needs prompts of at least 2 tokens (for attention to token 0 and loss)")
        logits, cache = model.run_with_cache(tokens, attention_mask=mask, names_filter=_keep)
        # Each measurement is a mean over its own unit (query, sequence, gate value, predicted
        # token); weighting batches by those counts makes the pooled value exact.
        n_queries = float(mask[:, 1:].sum())
        n_predicted = float((mask[:, 1:] * mask[:, :-1]).sum())
        if n_queries:
            sums["f_attn"] += float(first_token_attention(cache, mask, per="model")) * n_queries
            counts["f_attn"] += n_queries
        sums["sink_rate"] += sink_rate(cache, eps, 0, mask) * tokens.shape[0]
        counts["sink_rate"] += tokens.shape[0]
        batch_max = max_activation_by_layer(cache, mask)
        layer_max = batch_max if layer_max is None else torch.maximum(layer_max, batch_max)
        if gated:
            n_real = float(mask.sum())
            sums["mean_gate"] += mean_gate_score(cache, mask) * n_real
            counts["mean_gate"] += n_real
        if n_predicted:
            sums["loss"] += float(model.loss_fn(logits, tokens, mask)) * n_predicted
            counts["loss"] += n_predicted
    result = {key: sums[key] / counts[key] if counts[key] else float("nan") for key in sums}
    result["m_act"] = float(layer_max.mean())
    return {key: result[key] for key in COLUMNS}


def compare_variants(
    models: Mapping[str, Any],
    prompts: Prompts,
    batch_size: int | None = 8,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    eps: float = 0.3,
    progress: bool = True,
) -> pd.DataFrame:
    """Run every model on the same prompts (strings, right-padded per batch, or a `[batch, pos]`
    token tensor with an optional `attention_mask`).

    Returns a DataFrame indexed by variant name with columns f_attn (mean attention of queries >= 1
    to token 0), sink_rate (Gu et al., eps, key 0), m_act (mean over layers of max |resid_post|),
    mean_gate (NaN for an ungated model) and loss (mean next-token loss, padding excluded).
    """
    if not models:
        raise ValueError("no models given: pass a dict {variant name: model}")
    rows = {
        name: measure_variant(model, prompts, batch_size, attention_mask, eps, progress, desc=name)
        for name, model in models.items()
    }
    frame = pd.DataFrame.from_dict(rows, orient="index", columns=list(COLUMNS))
    frame.index.name = "variant"
    return frame
