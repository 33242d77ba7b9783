"""The one metric type: a TransformerLens-style `metric(logits) -> scalar tensor`.

Interventions (`analysis.ablation_effects`) and patching sweeps (`gated_interp.patching`) both take
a `Metric`. A metric written for `transformer_lens.patching` works unchanged in either. Metrics
that also need the tokens or the padding mask may take them as two more positional arguments,
`metric(logits, tokens, attention_mask)`; `call_metric` passes them only to such metrics.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from jaxtyping import Float, Int
from torch import Tensor

from gated_interp.masks import Mask

Metric = Callable[[Float[Tensor, "batch pos d_vocab"]], Float[Tensor, ""]]


def _positional_arity(metric: Callable) -> int:
    try:
        parameters = inspect.signature(metric).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: assume TL style
        return 1
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters):
        return 3
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(1 for p in parameters if p.kind in positional and p.default is p.empty)


def call_metric(
    metric: Callable,
    logits: Float[Tensor, "batch pos d_vocab"],
    tokens: Int[Tensor, "batch pos"] | None = None,
    attention_mask: Mask[Tensor, "batch pos"] | None = None,
) -> Float[Tensor, ""] | Float[Tensor, "batch"] | float:
    """`metric(logits)`, or `metric(logits, tokens, attention_mask)` for a metric whose signature
    requires three positional arguments. Metrics may return one value per sequence `[batch]` where
    the caller accepts it (e.g. `ablation_effects(..., n_boot=...)`)."""
    arity = _positional_arity(metric)
    if arity >= 3:
        return metric(logits, tokens, attention_mask)
    if arity == 2:
        raise TypeError(
            "a metric takes logits (TransformerLens style, metric(logits)) or logits, tokens and "
            "attention_mask (metric(logits, tokens, attention_mask)); this one requires two arguments"
        )
    return metric(logits)
