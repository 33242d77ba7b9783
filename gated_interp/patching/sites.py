"""Where each patchable activation lives and how its axes are laid out.

A sweep needs three facts per activation: the hook name in a layer, which tensor axis indexes
heads (if any) and which indexes positions. `canonical` then reorders any of them to
`[head?, pos, batch, ...]`, so one indexing rule patches them all.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from gated_interp import hooks
from gated_interp.model import HookedGatedQwen3

# Activations inside `blocks.{l}.attn`: [batch, pos, head, ...] except the pattern.
HEAD_ACTIVATIONS = ("z", "z_pre_gate", "gate_logits", "gate", "q", "k", "v", "pattern", "attn_scores")
GATE_ACTIVATIONS = hooks.GATE_HOOKS
# Residual-stream-shaped activations of `blocks.{l}`: [batch, pos, d_model].
RESID_ACTIVATIONS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")


@dataclass(frozen=True)
class Site:
    """One activation kind: `hook_name(l)` and its head/position axes in the batched tensor."""

    activation: str
    head_axis: int | None  # None for residual-stream activations
    pos_axis: int  # the query/destination position for patterns

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
    if model.cfg.linear_attention_layers:
        # The sweeps reuse the corrupted run's keys and values per layer and position; a Gated DeltaNet
        # layer carries a recurrent state instead, which they do not yet rebuild: refuse, never guess.
        raise ValueError(
            f"this package's patching sweeps do not run on hybrid models yet (linear-attention layers "
            f"{list(model.cfg.linear_attention_layers)}): patch the full-attention heads with "
            "transformer_lens.patching and an index_df over model.cfg.full_attention_layers (README, Qwen3.5 "
            "section), or use analysis.zero_ablate_heads / ablation_effects, which take heads of both kinds"
        )
    if activation in GATE_ACTIVATIONS and not model.cfg.is_gated:
        raise ValueError(f"activation {activation!r} needs a gated model, but this one has cfg.gate == 'none'")
    if activation not in HEAD_ACTIVATIONS + RESID_ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose from {HEAD_ACTIVATIONS + RESID_ACTIVATIONS}")
    spec = hooks.spec(activation)
    n_axes = len(spec.axis_names)
    head = None if spec.head_dim is None else spec.head_dim + n_axes
    return Site(activation, head_axis=head, pos_axis=spec.pos_dim + n_axes)
