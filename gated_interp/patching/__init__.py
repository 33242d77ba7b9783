"""Activation patching and attribution patching for `HookedGatedQwen3`, gate activations included.

from functools import partial
from gated_interp.patching import patch_heads, attribution_patching, metrics

metric = partial(metrics.logit_diff, answer_tokens=answers, wrong_tokens=wrongs)
_, clean_cache = model.run_with_cache(clean_tokens)
gate_effect = patch_heads(model, corrupted_tokens, clean_cache, metric, activation="gate")  # [layer, head]
estimates = attribution_patching(model, clean_tokens, corrupted_tokens, metric)  # {"z": [layer, head], ...}
star = attribution_patching(model, clean_tokens, corrupted_tokens, metric, method="atp*")  # AtP* magnitudes
result = screen_and_verify(model, clean_tokens, corrupted_tokens, metric, top_k=8)  # AtP*, then exact
print(patch_heads(model, corrupted_tokens, clean_cache, metric, per_position=True, dry_run=True))  # the cost
"""

from gated_interp.patching import metrics
from gated_interp.patching.activation import patch_heads, patch_resid
from gated_interp.patching.atp_star import atp_star
from gated_interp.patching.attribution import attribution_patching, attribution_patching_from_cache
from gated_interp.patching.metrics import logit_diff, normalized_metric
from gated_interp.patching.planner import DEFAULT_MAX_TOKENS, DEFAULT_MEMORY_BUDGET, SweepPlan
from gated_interp.patching.results import HEAD_AXES, HEAD_POS_AXES, RESID_AXES, to_dataframe
from gated_interp.patching.screen import ScreenResult, screen_and_verify, spearman
from gated_interp.patching.sites import HEAD_ACTIVATIONS, LINEAR_HEAD_ACTIVATIONS, RESID_ACTIVATIONS

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_MEMORY_BUDGET",
    "HEAD_ACTIVATIONS",
    "HEAD_AXES",
    "HEAD_POS_AXES",
    "LINEAR_HEAD_ACTIVATIONS",
    "RESID_ACTIVATIONS",
    "RESID_AXES",
    "ScreenResult",
    "SweepPlan",
    "atp_star",
    "attribution_patching",
    "attribution_patching_from_cache",
    "logit_diff",
    "metrics",
    "normalized_metric",
    "patch_heads",
    "patch_resid",
    "screen_and_verify",
    "spearman",
    "to_dataframe",
]
