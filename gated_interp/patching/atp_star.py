"""AtP* (Kramár et al., 2024, "AtP*: An efficient and scalable method for localizing LLM behaviour
to components"): attribution patching with two fixes for its false negatives.

- QK fix. Linearising through the attention softmax fails when attention is saturated. For query
  and key nodes the softmax is recomputed exactly with the clean query (or key) and the corrupted
  rest; only the step from the attention pattern to the metric is linearised:
  `Δ ≈ (softmax(q_clean · k_x) - pattern_x) · dM/dpattern`.
- Gate fix (the same idea applied to this package's gate): for gate-logit nodes the sigmoid and the
  multiply are recomputed exactly, `Δz = z_pre_gate_x * (σ(g_clean) - σ(g_x))`, and only the step
  from `z` to the metric is linearised: `Δ ≈ Δz · dM/dz`.
- GradDrop. An estimate can vanish because a node's direct and indirect effects cancel in the
  gradient. For each block l, the gradient is taken with the backward pass blocked at block l's
  outputs (`hook_attn_out` and `hook_mlp_out` pass values forward but no gradient back), and the
  estimate is `1/(L-1) Σ_l |estimate with block l dropped|` (for a node in the last block this is
  `|AtP|`). The result is a magnitude: use it to rank nodes, then verify the top ones exactly
  (`screen_and_verify`).

Nodes: "z" (each head's output, the plain AtP estimate `(z_c - z_x) · dM/dz`), "gate_logits"
(gate fix), "q" (query heads, QK fix) and "k" (key-value heads, QK fix), per head or per
(head, position). Patching "q" or "k" means patching `hook_q` / `hook_k` (the raw projections): at
a given position the normalised, rotated query that enters the softmax is a function of it alone.

On a hybrid model the Gated DeltaNet heads are nodes too: "recurrent_out" (the delta rule's output,
before the gated norm), "lin_gate" (the output gate `silu(z)`) and "lin_out" (what the layer's
`W_O` reads), each with the plain estimate `(a_c - a_x) · dM/da` and GradDrop. They need no fix:
there is no softmax to saturate, and the output is linear in `lin_gate` (so its plain estimate is
already the gate fix of `silu`: the nonlinearity is recomputed exactly in `lin_gate_c`).
Estimates are `[layer, head]` over all layers, NaN on the layers of the other type.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from gated_interp import hooks
from gated_interp.hooks import hook_name
from gated_interp.masks import Mask
from gated_interp.model import HookedGatedQwen3
from gated_interp.patching.activation import by_true_layer, result_dtype
from gated_interp.patching.metrics import Metric
from gated_interp.patching.runs import clean_run, corrupted_with_grads, token_batch
from gated_interp.patching.sites import site

# Gated DeltaNet nodes: plain estimates at the node itself (see the module docstring)
LINEAR_STAR_ACTIVATIONS = ("recurrent_out", "lin_gate", "lin_out")
ATP_STAR_ACTIVATIONS = ("z", "gate_logits", "q", "k") + LINEAR_STAR_ACTIVATIONS


def default_star_activations(model: HookedGatedQwen3) -> tuple[str, ...]:
    linear = ("recurrent_out", "lin_gate") if model.cfg.linear_attention_layers else ()
    return ("z", "q", "k") + (("gate_logits",) if model.cfg.is_gated else ()) + linear


def _needed(activations: Sequence[str]) -> tuple[set[str], set[str]]:
    """Short hook names needed from the clean run and from the corrupted run."""
    clean, corrupted = set(), {"z"}
    if "z" in activations:
        clean.add("z")
    if "gate_logits" in activations:
        clean.add("gate_logits")
        corrupted |= {"gate_logits", "z_pre_gate"}
    if "q" in activations or "k" in activations:
        clean |= {"rot_q", "rot_k"}
        corrupted |= {"rot_q", "rot_k", "pattern", "attn_scores"}
    linear = set(activations) & set(LINEAR_STAR_ACTIVATIONS)
    return clean | linear, corrupted | linear


def atp_star(
    model: HookedGatedQwen3,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    metric: Metric,
    activations: Sequence[str] | None = None,
    per_position: bool = False,
    attention_mask: Mask[Tensor, "batch pos"] | None = None,
    grad_drop: bool = True,
) -> dict[str, Float[Tensor, "layer head"] | Float[Tensor, "layer head pos"]]:
    """AtP* estimates for every head: `{activation: [layer, head]}` (or `[layer, head, pos]`).

    activations: any of "z", "gate_logits" (gated models), "q" and "k" (`[layer, kv_head]`);
        default all that the model has.
    grad_drop: True (AtP*) returns the GradDrop magnitudes `1/(L-1) Σ_l |Δ_l|` (>= 0, for
        ranking; costs one forward and backward per layer). False returns the signed estimates
        with the QK and gate fixes only (one forward and backward), comparable to
        `patch_heads(...) - corrupted_metric`.
    `metric(logits[batch, pos, d_vocab]) -> scalar` as for every sweep; `attention_mask` applies to
    both runs.
    """
    activations = tuple(activations) if activations is not None else default_star_activations(model)
    unknown = [a for a in activations if a not in ATP_STAR_ACTIVATIONS]
    if unknown:
        raise ValueError(f"AtP* covers {ATP_STAR_ACTIVATIONS}, got {unknown}; use method='atp' for other activations")
    if "gate_logits" in activations and not model.cfg.is_gated:
        raise ValueError("'gate_logits' needs a gated model, but this one has cfg.gate == 'none'")
    clean_tokens = token_batch(model, clean_tokens, attention_mask)[0]
    tokens = token_batch(model, corrupted_tokens, attention_mask)[0]
    if clean_tokens.shape != tokens.shape:
        raise ValueError(
            f"clean tokens {tuple(clean_tokens.shape)} and corrupted tokens {tuple(tokens.shape)} must have the "
            "same [batch, pos]"
        )
    layers = {activation: site(model, activation).layers for activation in activations}  # checks each name
    clean_names, corrupted_names = _needed(activations)
    n_layers = model.cfg.n_layers
    _, clean = clean_run(model, clean_tokens, _hook_names(model, clean_names), attention_mask)
    drops = list(range(n_layers)) if grad_drop and n_layers > 1 else [None]
    total: dict[str, Tensor] = {}
    for drop in drops:
        acts, grads = _corrupted_with_grads(model, tokens, metric, corrupted_names, attention_mask, drop)
        for activation in activations:
            est = torch.stack(
                [
                    _estimate(model, activation, layer, clean.cache_dict, acts, grads, per_position)
                    for layer in layers[activation]
                ]
            )
            if drop is not None:
                est = est.abs()
            total[activation] = total.get(activation, 0) + est
    scale = 1 / (n_layers - 1) if drops[0] is not None else 1.0
    return {
        a: by_true_layer((total[a] * scale).to(result_dtype(model)).cpu(), layers[a], n_layers) for a in activations
    }


def _hook_names(model: HookedGatedQwen3, short_names: set[str]) -> list[str]:
    """Full hook names of `short_names` in every layer that has them, in a fixed order."""
    cfg = model.cfg
    return [
        hook_name(name, layer)
        for layer in range(cfg.n_layers)
        for name in sorted(short_names)
        if hooks.spec(name).exists_at(cfg, layer)
    ]


def _corrupted_with_grads(
    model: HookedGatedQwen3,
    tokens: Int[Tensor, "batch pos"],
    metric: Metric,
    short_names: set[str],
    attention_mask: Mask[Tensor, "batch pos"] | None,
    drop: int | None,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Corrupted activations at `short_names` in every layer and the metric's gradients at hook_z
    and hook_pattern, with the backward pass blocked at block `drop`'s outputs (GradDrop) if given."""

    def block_grad(act: Tensor, hook: object) -> Tensor:
        return act.detach()  # same value forward, no gradient back through this block's output

    names = _hook_names(model, short_names)
    wanted = _hook_names(model, short_names & {"z", "pattern", *LINEAR_STAR_ACTIVATIONS})
    blocked = [] if drop is None else [(hook_name(out, drop), block_grad) for out in ("attn_out", "mlp_out")]
    return corrupted_with_grads(model, tokens, metric, names, attention_mask, grad_names=wanted, extra_hooks=blocked)


def _estimate(
    model: HookedGatedQwen3,
    activation: str,
    layer: int,
    clean: dict[str, Tensor],
    acts: dict[str, Tensor],
    grads: dict[str, Tensor],
    per_position: bool,
) -> Float[Tensor, "head"] | Float[Tensor, "head pos"]:
    def c(name: str) -> Tensor:
        return clean[hook_name(name, layer)].double()

    def x(name: str) -> Tensor:
        return acts[hook_name(name, layer)].double()

    def g(name: str) -> Tensor:
        return grads[hook_name(name, layer)].double()

    if activation in LINEAR_STAR_ACTIVATIONS:  # the plain estimate at the node: [batch, pos, lin_v_head, d]
        per = ((c(activation) - x(activation)) * g(activation)).sum(dim=(0, 3))  # [pos, head]
        return per.T if per_position else per.sum(0)
    if activation in ("z", "gate_logits"):
        if activation == "z":
            delta = c("z") - x("z")  # [batch, pos, head, d_head]
        else:  # gate fix: the sigmoid and the multiply exactly
            delta = x("z_pre_gate") * (torch.sigmoid(c("gate_logits")) - torch.sigmoid(x("gate_logits")))
        per = (delta * g("z")).sum(dim=(0, 3))  # [pos, head]
        return per.T if per_position else per.sum(0)

    # QK fix: the attention pattern recomputed with the clean query or key.
    n_groups = model.cfg.n_groups
    q_x, k_x = x("rot_q"), x("rot_k").repeat_interleave(n_groups, dim=2)  # [batch, pos, head, d]
    visible = torch.isfinite(x("attn_scores"))  # [batch, head, q_pos, k_pos]
    pattern, grad = x("pattern"), g("pattern")
    scale = 1 / math.sqrt(model.cfg.d_head)
    if activation == "q":
        scores = torch.einsum("bqhd,bkhd->bhqk", c("rot_q"), k_x) * scale
        new = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
        per = ((new - pattern) * grad).sum(dim=(0, 3))  # [head, q_pos]; row t changes only with query t
        return per if per_position else per.sum(-1)
    # "k": key-value heads; one key changes every query head of its group.
    k_c = c("rot_k").repeat_interleave(n_groups, dim=2)
    if per_position:
        # Only the score of key s changes, by delta[t, s]; the new row is p * e^{delta [j = s]} / norm,
        # so Σ_j g p' = (G + g_s p_s (e^δ - 1)) / (1 + p_s (e^δ - 1)), with G = Σ_j g p.
        delta = torch.einsum("bqhd,bkhd->bhqk", q_x, k_c - k_x) * scale
        grow = torch.expm1(delta.clamp(max=80.0)) * pattern  # p_s (e^δ - 1); 0 where masked
        G = (grad * pattern).sum(-1, keepdim=True)  # [batch, head, q, 1]
        change = (G + grad * grow) / (1 + grow) - G  # [batch, head, q, k]
        per_head = change.masked_fill(~visible, 0.0).sum(dim=(0, 2))  # [head, k_pos]
    else:
        scores = torch.einsum("bqhd,bkhd->bhqk", q_x, k_c) * scale
        new = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
        per_head = ((new - pattern) * grad).sum(dim=(0, 2, 3))  # [head]
    return per_head.unflatten(0, (-1, n_groups)).sum(1)  # [kv_head, ...]
