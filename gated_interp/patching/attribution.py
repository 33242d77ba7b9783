"""Attribution patching: the first-order (gradient) approximation of activation patching.

For an activation a with clean value a_c and corrupted value a_x, patching a_c into the corrupted
run changes the metric by about (a_c - a_x) · dM/da, the gradient taken on the corrupted run. One
clean forward, one corrupted forward and one backward give this for every layer × head (×
position) of every requested activation at once (Nanda, "Attribution Patching", 2023).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from jaxtyping import Float, Int
from torch import Tensor

from gated_interp.cache import CacheLike
from gated_interp.masks import Mask
from gated_interp.model import HookedGatedQwen3
from gated_interp.patching.activation import by_true_layer, checked_clean, result_dtype
from gated_interp.patching.atp_star import atp_star
from gated_interp.patching.metrics import Metric
from gated_interp.patching.runs import clean_run, corrupted_with_grads, token_batch
from gated_interp.patching.sites import GATE_ACTIVATIONS, site


def default_activations(model: HookedGatedQwen3) -> tuple[str, ...]:
    """Head outputs and queries, plus the gate's activations when the model has a gate; on a
    hybrid model also the Gated DeltaNet heads' output before and the output gate (`recurrent_out`,
    `lin_gate`)."""
    linear = ("recurrent_out", "lin_gate") if model.cfg.linear_attention_layers else ()
    return ("z", "q", "pattern") + (GATE_ACTIVATIONS if model.cfg.is_gated else ()) + linear


def attribution_patching(
    model: HookedGatedQwen3,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    metric: Metric,
    activations: Sequence[str] | None = None,
    per_position: bool = False,
    attention_mask: Mask[Tensor, "batch pos"] | None = None,
    method: str = "atp",
    grad_drop: bool = True,
) -> dict[str, Float[Tensor, "layer head"] | Float[Tensor, "layer head pos"] | Float[Tensor, "layer pos"]]:
    """Estimated metric change from patching each clean activation into the corrupted run.

    method: "atp" (default) is plain attribution patching; "atp*" is AtP* (Kramár et al., 2024;
    see `gated_interp.patching.atp_star`): the QK fix for "q"/"k", the gate fix for
    "gate_logits", and with `grad_drop=True` GradDrop, whose estimates are magnitudes (>= 0) for
    ranking heads. AtP* covers "z", "gate_logits", "q" and "k" (default: those the model has).

    Returns {activation: estimate}: `[layer, head]` (or `[layer, head, pos]` with `per_position`)
    for head activations ("z", "z_pre_gate", "gate_logits", "gate", "q", "k", "v", "pattern"),
    `[layer, pos]` for residual-stream ones ("resid_pre", ...). Add the corrupted metric to an
    estimate to compare it with `patch_heads` / `patch_resid`. `attention_mask` applies to both
    runs. `metric(logits[batch, pos, d_vocab]) -> scalar`, as for activation patching.
    """
    if method == "atp*":
        return atp_star(
            model, clean_tokens, corrupted_tokens, metric, activations, per_position, attention_mask, grad_drop
        )
    if method != "atp":
        raise ValueError(f"method must be 'atp' (attribution patching) or 'atp*' (AtP*), got {method!r}")
    activations = tuple(activations) if activations is not None else default_activations(model)
    names = {where.hook_name(layer) for where in map(partial(site, model), activations) for layer in where.layers}
    _, clean_cache = clean_run(model, clean_tokens, names, attention_mask)
    return attribution_patching_from_cache(
        model, corrupted_tokens, clean_cache, metric, activations, per_position, attention_mask
    )


def attribution_patching_from_cache(
    model: HookedGatedQwen3,
    corrupted_tokens: Int[Tensor, "batch pos"],
    clean_cache: CacheLike,
    metric: Metric,
    activations: Sequence[str] | None = None,
    per_position: bool = False,
    attention_mask: Mask[Tensor, "batch pos"] | None = None,
) -> dict[str, Tensor]:
    """`attribution_patching` with the clean activations given, as `patch_heads` takes them.

    Any values may stand in for the clean run (e.g. the corrupted activations plus a small
    perturbation, where the estimate must agree with activation patching to first order).
    """
    activations = tuple(activations) if activations is not None else default_activations(model)
    sites = [site(model, a) for a in activations]
    tokens = token_batch(model, corrupted_tokens, attention_mask)[0]
    acts, grads = corrupted_with_grads(
        model,
        tokens,
        metric,
        [s.hook_name(layer) for s in sites for layer in s.layers],
        attention_mask,
    )

    results = {}
    for where in sites:
        per_layer = []
        for layer in where.layers:
            name = where.hook_name(layer)
            clean = checked_clean(clean_cache, where, layer, tokens.shape).to(acts[name])
            # [head?, pos, batch, rest...]: sum batch and features; then positions unless kept.
            product = where.canonical((clean - acts[name]) * grads[name])
            lead = 1 if where.head_axis is None else 2
            summed = product.flatten(lead).sum(-1)
            if where.head_axis is not None and not per_position:
                summed = summed.sum(-1)
            per_layer.append(summed)
        stacked = torch.stack(per_layer).to(result_dtype(model)).cpu()
        results[where.activation] = by_true_layer(stacked, where.layers, model.cfg.n_layers)
    return results
