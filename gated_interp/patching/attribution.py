"""Attribution patching: the first-order (gradient) approximation of activation patching.

For an activation a with clean value a_c and corrupted value a_x, patching a_c into the corrupted
run changes the metric by about (a_c - a_x) · dM/da, the gradient taken on the corrupted run. One
clean forward, one corrupted forward and one backward give this for every layer × head (×
position) of every requested activation at once (Nanda, "Attribution Patching", 2023).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from gated_interp.cache import CacheLike
from gated_interp.model import HookedGatedQwen3
from gated_interp.patching.activation import checked_clean, metric_scalar, result_dtype
from gated_interp.patching.atp_star import atp_star
from gated_interp.patching.metrics import Metric
from gated_interp.patching.sites import GATE_ACTIVATIONS, site


def default_activations(model: HookedGatedQwen3) -> tuple[str, ...]:
    """Head outputs and queries, plus the gate's activations when the model has a gate."""
    return ("z", "q", "pattern") + (GATE_ACTIVATIONS if model.cfg.is_gated else ())


def attribution_patching(
    model: HookedGatedQwen3,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    metric: Metric,
    activations: Sequence[str] | None = None,
    per_position: bool = False,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
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
    names = {site(model, a).hook_name(layer) for a in activations for layer in range(model.cfg.n_layers)}
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(
            clean_tokens, attention_mask=attention_mask, names_filter=lambda name: name in names
        )
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
    attention_mask: Int[Tensor, "batch pos"] | None = None,
) -> dict[str, Tensor]:
    """`attribution_patching` with the clean activations given, as `patch_heads` takes them.

    Any values may stand in for the clean run (e.g. the corrupted activations plus a small
    perturbation, where the estimate must agree with activation patching to first order).
    """
    activations = tuple(activations) if activations is not None else default_activations(model)
    sites = [site(model, a) for a in activations]
    tokens = torch.as_tensor(corrupted_tokens, device=model.cfg.device)
    tokens = tokens[None] if tokens.ndim == 1 else tokens
    acts, grads = _corrupted_with_grads(
        model,
        tokens,
        metric,
        [s.hook_name(layer) for s in sites for layer in range(model.cfg.n_layers)],
        attention_mask,
    )

    results = {}
    for where in sites:
        per_layer = []
        for layer in range(model.cfg.n_layers):
            name = where.hook_name(layer)
            clean = checked_clean(clean_cache, where, layer, tokens.shape).to(acts[name])
            # [head?, pos, batch, rest...]: sum batch and features; then positions unless kept.
            product = where.canonical((clean - acts[name]) * grads[name])
            lead = 1 if where.head_axis is None else 2
            summed = product.flatten(lead).sum(-1)
            if where.head_axis is not None and not per_position:
                summed = summed.sum(-1)
            per_layer.append(summed)
        results[where.activation] = torch.stack(per_layer).to(result_dtype(model)).cpu()
    return results


def _corrupted_with_grads(
    model: HookedGatedQwen3,
    tokens: Int[Tensor, "batch pos"],
    metric: Metric,
    names: list[str],
    attention_mask: Int[Tensor, "batch pos"] | None,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The corrupted activations at `names` and d metric / d activation, from one backward."""
    acts: dict[str, Tensor] = {}

    def as_leaf(embed: Tensor, hook: object) -> Tensor:
        # Grads flow from here, whether or not the weights require grad (frozen models too); the
        # weights' own .grad is never touched because only activation grads are asked for.
        return embed.detach().requires_grad_(True)

    def keep(act: Tensor, hook: object) -> None:
        acts[hook.name] = act

    hooks = [("hook_embed", as_leaf)] + [(name, keep) for name in names]
    with torch.enable_grad():
        logits = model.run_with_hooks(tokens, attention_mask=attention_mask, fwd_hooks=hooks)
        value = metric_scalar(metric(logits))
        if not value.requires_grad:
            raise ValueError("the metric's value does not depend on the logits through autograd (was it detached?)")
        found = torch.autograd.grad(value, [acts[n] for n in names], allow_unused=True)
    grads = {n: torch.zeros_like(acts[n]) if g is None else g for n, g in zip(names, found)}
    return {n: a.detach() for n, a in acts.items()}, grads
