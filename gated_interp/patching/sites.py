"""Where each patchable activation lives and how its axes are laid out.

A sweep needs four facts per activation: the hook name in a layer, the layers that have it (on a
hybrid model, attention hooks live on the full-attention layers and Gated DeltaNet hooks on the
linear-attention ones), which tensor axis indexes heads (if any) and which indexes positions.
`canonical` then reorders any of them to `[head?, pos, batch, ...]`, so one indexing rule patches
them all.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from gated_interp import hooks
from gated_interp.model import HookedGatedQwen3

# Activations inside `blocks.{l}.attn` (full-attention layers): [batch, pos, head, ...] except the pattern.
HEAD_ACTIVATIONS = ("z", "z_pre_gate", "gate_logits", "gate", "q", "k", "v", "pattern", "attn_scores")
# Activations inside `blocks.{l}.linear_attn` (Gated DeltaNet, linear-attention layers of hybrid
# models): [batch, pos, lin_v_head, ...] (lin_q, lin_k: lin_k_head). Each is computed per position
# after the causal convolution, so patching position p changes nothing before p.
LINEAR_HEAD_ACTIVATIONS = ("recurrent_out", "lin_gate", "lin_out", "lin_z", "lin_v", "lin_q", "lin_k", "beta", "decay")
GATE_ACTIVATIONS = hooks.GATE_HOOKS
# Residual-stream-shaped activations of `blocks.{l}`: [batch, pos, d_model], on every layer.
RESID_ACTIVATIONS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
# Axis names that index heads: query heads, key-value heads, and the Gated DeltaNet's value and key heads.
_HEAD_AXES = ("head", "kv_head", "lin_v_head", "lin_k_head")


@dataclass(frozen=True)
class Site:
    """One activation kind: `hook_name(l)`, the `layers` that have it, and its head/position axes
    in the batched tensor."""

    activation: str
    head_axis: int | None  # None for residual-stream activations
    pos_axis: int  # the query/destination position for patterns
    layers: tuple[int, ...]  # the layers with this hook (all but the other type's on a hybrid model)

    def hook_name(self, layer: int) -> str:
        return hooks.hook_name(self.activation, layer)

    def canonical(self, act: Tensor, batch_dims: int = 1) -> Tensor:
        """A view of `act` ordered `[*batch_dims[:-1], head?, pos, batch, rest...]`.

        `batch_dims=2` is for the replicated run, `[copies, prompts, ...]`: the copy axis stays
        first. Writing into the returned view writes into `act`.
        """
        lead = batch_dims - 1
        src = [lead + self.pos_axis] if self.head_axis is None else [lead + self.head_axis, lead + self.pos_axis]
        return act.movedim(src, list(range(lead, lead + len(src))))


def site(model: HookedGatedQwen3, activation: str) -> Site:
    """The `Site` of `activation` (axes read off the hook table), with a clear error for names
    this model does not have."""
    known = HEAD_ACTIVATIONS + LINEAR_HEAD_ACTIVATIONS + RESID_ACTIVATIONS
    if activation not in known:
        raise ValueError(f"unknown activation {activation!r}; choose from {known}")
    cfg = model.cfg
    if activation in GATE_ACTIVATIONS and not cfg.is_gated:
        raise ValueError(f"activation {activation!r} needs a gated model, but this one has cfg.gate == 'none'")
    spec = hooks.spec(activation)
    layers = tuple(layer for layer in range(cfg.n_layers) if spec.exists_at(cfg, layer))
    if not layers:
        kind = "linear-attention (Gated DeltaNet)" if spec.layer_type == "linear_attention" else spec.layer_type
        raise ValueError(
            f"activation {activation!r} exists only on {kind} layers, and this model has none "
            f"(layer types: {sorted({cfg.layer_type(layer) for layer in range(cfg.n_layers)})}); choose from "
            f"{_available(cfg)}"
        )
    names = spec.axis_names
    head = next((names.index(axis) for axis in _HEAD_AXES if axis in names), None)
    n_axes = len(names)
    return Site(
        activation,
        head_axis=head,  # axes counted from the batch axis
        pos_axis=spec.pos_dim + n_axes,
        layers=layers,
    )


def _available(cfg) -> list[str]:
    """The activations a model with `cfg` can patch, for error messages."""
    names = HEAD_ACTIVATIONS + LINEAR_HEAD_ACTIVATIONS + RESID_ACTIVATIONS
    return [name for name in names if hooks.spec(name).exists_in(cfg)]
