"""TransformerLens' weight processing, for an RMSNorm model with an attention-output gate.

Each function takes a state dict with TransformerLens' keys (`blocks.{l}.attn.W_Q`, `_W_K`, `_W_V`,
`W_G`, `blocks.{l}.mlp.W_gate`, `W_in`, `unembed.W_U`, ...) and returns a new one; the input
is never modified. `HookedGatedQwen3.process_weights_` runs the same steps on a live model in
place (`in_place=True`), with no second copy of the weights.

What carries over from TransformerLens and what does not, for this architecture:
- folding the norm weights: yes. RMSNorm is `w * x / rms(x)`, so `w` moves into every matrix that
  reads the norm's output: `ln1.w` into `W_Q`, `W_K`, `W_V` and the gate's `W_G` (the gate reads
  the same normalised residual as the queries), `ln2.w` into `W_gate` and `W_in`, `ln_final.w`
  into `W_U`. The q/k norm weights stay: rotary sits between them and the dot product.
- centring writing weights: no. RMSNorm does not subtract the mean, so a residual component along
  the all-ones direction changes every norm's output (TransformerLens skips it for RMS models).
- centring the unembedding: yes; logits shift by a per-position constant, log-probs are unchanged.
- folding value biases into `b_O`: only without a gate. Each attention row sums to one, so `b_V`
  adds `b_V @ W_O` whatever the pattern; a gate scales that per query, so it is not a constant.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from jaxtyping import Float
from torch import Tensor

from gated_interp.config import GatedQwen3Config

StateDict = dict[str, Tensor]
# (state-dict key, new value) pairs, computed one at a time from values not yet replaced: a norm
# weight is replaced only after every weight that reads it. In place, the value may be the very
# tensor of the state dict, already updated.
Updates = Iterator[tuple[str, Tensor]]
_SLICE = 8192  # columns per float32 slice when a half-precision weight is updated in place


def _work_dtype(t: Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)


def _scale_rows(weight: Float[Tensor, "*head d_model out"], w: Float[Tensor, "d_model"], in_place: bool) -> Tensor:
    """`weight` that reads `w * x` instead of `x`: its `d_model` rows times `w`, computed in at
    least float32 and rounded once to the weight's dtype."""
    scale = w.to(_work_dtype(weight))[:, None]
    if not in_place:
        return (weight.to(scale.dtype) * scale).to(weight.dtype)
    if weight.dtype == scale.dtype:
        return weight.mul_(scale)
    for part in weight.split(_SLICE, dim=-1):  # half precision: one float32 slice at a time
        part.copy_(part.to(scale.dtype) * scale)
    return weight


def _center_columns(W_U: Float[Tensor, "d_model d_vocab"], in_place: bool) -> Tensor:
    """`W_U` minus its mean over the vocabulary."""
    mean = W_U.mean(-1, keepdim=True, dtype=_work_dtype(W_U))
    if not in_place:
        return (W_U.to(mean.dtype) - mean).to(W_U.dtype)
    for part in W_U.split(_SLICE, dim=-1):
        part.copy_(part.to(mean.dtype) - mean)
    return W_U


def unembedding(state_dict: StateDict) -> Float[Tensor, "d_model d_vocab"]:
    """`unembed.W_U`, or `embed.W_E.T` for a tied model's state dict (which has no `unembed.W_U`)."""
    return state_dict["unembed.W_U"] if "unembed.W_U" in state_dict else state_dict["embed.W_E"].T


def _updated(state_dict: StateDict, updates: Updates) -> StateDict:
    out = dict(state_dict)
    out.update(updates)
    return out


def fold_layer_norm(state_dict: StateDict, cfg: GatedQwen3Config) -> StateDict:
    """Norm weights folded into the matrices that read each norm; every norm weight becomes ones.

    A tied model's state dict gains its own `unembed.W_U` (the embedding is not touched), unless
    `ln_final.w` is already all ones.
    """
    return _updated(state_dict, fold_layer_norm_updates(state_dict, cfg))


def center_unembed(state_dict: StateDict) -> StateDict:
    """`W_U` and `b_U` minus their mean over the vocabulary (a tied model gains `unembed.W_U`)."""
    return _updated(state_dict, center_unembed_updates(state_dict))


def fold_value_biases(state_dict: StateDict, cfg: GatedQwen3Config) -> StateDict:
    """`b_V` moved into `b_O` (`b_O += sum_h b_V[h] @ W_O[h]`, `b_V = 0`); ungated models only."""
    return _updated(state_dict, fold_value_biases_updates(state_dict, cfg))


def _readers_of_ln1(cfg: GatedQwen3Config, layer: int) -> tuple[str, ...]:
    """The weights that read ln1's output, as state-dict keys."""
    if cfg.layer_type(layer) == "linear_attention":
        return tuple(f"blocks.{layer}.linear_attn.{n}" for n in ("W_Q", "W_K", "W_V", "W_Z", "W_b", "W_a"))
    names = ("W_Q", "_W_K", "_W_V") + (("W_G",) if cfg.is_gated else ())
    return tuple(f"blocks.{layer}.attn.{n}" for n in names)


def _readers_of_ln2(cfg: GatedQwen3Config, layer: int) -> tuple[str, ...]:
    mlp = f"blocks.{layer}.mlp"
    if cfg.mlp_kind(layer) == "dense":
        return (f"{mlp}.W_gate", f"{mlp}.W_in")
    names = [f"{mlp}.W_router", f"{mlp}.W_gate", f"{mlp}.W_in"]
    if cfg.d_mlp_shared:
        names += [f"{mlp}.W_shared_gate", f"{mlp}.shared_expert.W_gate", f"{mlp}.shared_expert.W_in"]
    return tuple(names)


def norm_scale(w: Tensor, cfg: GatedQwen3Config) -> Tensor:
    """What a norm multiplies by: `w`, or `1 + w` for zero-centred norms (Qwen3.5, Qwen3-Next)."""
    return 1 + w.to(_work_dtype(w)) if cfg.zero_centred_norms else w


def identity_norm_weight(w: Tensor, cfg: GatedQwen3Config) -> Tensor:
    """The weight of a norm that multiplies by one: zeros for zero-centred norms, else ones."""
    return torch.zeros_like(w) if cfg.zero_centred_norms else torch.ones_like(w)


def fold_layer_norm_updates(state_dict: StateDict, cfg: GatedQwen3Config, in_place: bool = False) -> Updates:
    """In place, a tied state dict must already have its own `unembed.W_U` (see `needs_own_unembedding`).
    Each layer's own readers: attention or Gated DeltaNet projections for ln1, the dense MLP or
    the MoE's router, experts, shared expert and its gate for ln2."""
    for layer in range(cfg.n_layers):
        yield from fold_block_norms_updates(state_dict, cfg, layer, in_place)
    yield from fold_final_norm_updates(state_dict, cfg, in_place)


def fold_block_norms_updates(
    state_dict: StateDict, cfg: GatedQwen3Config, layer: int, in_place: bool = False
) -> Updates:
    """Block `layer`'s ln1 and ln2 folded into their readers; `state_dict` needs that block's keys
    only (a model loaded across devices is folded one block at a time)."""
    block = f"blocks.{layer}"
    ln1, ln2 = state_dict[f"{block}.ln1.w"], state_dict[f"{block}.ln2.w"]
    for norm, readers in ((ln1, _readers_of_ln1(cfg, layer)), (ln2, _readers_of_ln2(cfg, layer))):
        scale = norm_scale(norm, cfg)
        for name in readers:
            yield name, _scale_rows(state_dict[name], scale, in_place)
    yield f"{block}.ln1.w", identity_norm_weight(ln1, cfg)
    yield f"{block}.ln2.w", identity_norm_weight(ln2, cfg)


def fold_final_norm_updates(state_dict: StateDict, cfg: GatedQwen3Config, in_place: bool = False) -> Updates:
    """`ln_final.w` folded into `W_U`; needs `ln_final.w` and `unembed.W_U` (or a tied `embed.W_E`)."""
    final = state_dict["ln_final.w"]
    if "unembed.W_U" in state_dict or not bool((norm_scale(final, cfg) == 1).all()):
        if in_place and "unembed.W_U" not in state_dict:
            raise ValueError("in place, a tied model must be untied before its ln_final.w is folded")
        yield "unembed.W_U", _scale_rows(unembedding(state_dict), norm_scale(final, cfg), in_place)
    yield "ln_final.w", identity_norm_weight(final, cfg)


def center_unembed_updates(state_dict: StateDict, in_place: bool = False) -> Updates:
    if in_place and "unembed.W_U" not in state_dict:
        raise ValueError("in place, a tied model must be untied before its W_U is centred")
    b_U = state_dict["unembed.b_U"]
    yield "unembed.W_U", _center_columns(unembedding(state_dict), in_place)
    yield "unembed.b_U", (b_U.to(_work_dtype(b_U)) - b_U.mean(dtype=_work_dtype(b_U))).to(b_U.dtype)


def needs_own_unembedding(
    state_dict: StateDict, fold_ln: bool, center_unembed: bool, zero_centred: bool = False
) -> bool:
    """Whether processing a tied state dict this way changes `W_U` (so it must stop being `W_E.T`).
    Folding changes nothing when `ln_final` already multiplies by one: `w == 1`, or `w == 0` for a
    zero-centred norm (`1 + w`)."""
    identity = 0.0 if zero_centred else 1.0
    return "unembed.W_U" not in state_dict and (
        center_unembed or (fold_ln and not bool((state_dict["ln_final.w"] == identity).all()))
    )


CENTER_WRITING_WEIGHTS_UNSUPPORTED = (
    "center_writing_weights cannot apply to an RMSNorm model: RMSNorm does not subtract the mean, so "
    "removing the mean from the weights that write to the residual stream changes what every norm "
    "outputs (TransformerLens skips it for RMSNorm models too). Leave it False; load_hooked folds the "
    "norm weights (fold_ln=True), which is the processing that holds here."
)
REFACTOR_UNSUPPORTED = (
    "refactor_factored_attn_matrices cannot apply with rotary embeddings: the QK circuit depends on the "
    "query and key positions (and here on the q/k norms). Leave it False; model.QK and model.OV give the "
    "factored matrices as they are."
)


def refuse_gated_value_bias_fold(cfg: GatedQwen3Config) -> None:
    """Raise when `cfg` has a gate: its value biases are not a constant `b_O` could absorb."""
    if cfg.is_gated:
        raise ValueError(
            f"fold_value_biases cannot apply to a gated model (gate={cfg.gate!r}): the gate scales each "
            "head's value-bias contribution per query, so it is not a constant that b_O could absorb. "
            "Leave fold_value_biases=False."
        )


def fold_value_biases_updates(state_dict: StateDict, cfg: GatedQwen3Config) -> Updates:
    refuse_gated_value_bias_fold(cfg)
    for layer in range(cfg.n_layers):
        attn = f"blocks.{layer}.attn"
        b_V = state_dict[f"{attn}._b_V"].repeat_interleave(cfg.n_groups, dim=0)  # [head, d_head]
        W_O, b_O = state_dict[f"{attn}.W_O"], state_dict[f"{attn}.b_O"]
        work = _work_dtype(W_O)
        through_O = torch.einsum("hd,hdm->m", b_V.to(work), W_O.to(work))
        yield f"{attn}.b_O", (b_O.to(work) + through_O).to(b_O.dtype)
        yield f"{attn}._b_V", torch.zeros_like(state_dict[f"{attn}._b_V"])


class WeightProcessingMixin:
    """The steps above on a live `HookedGatedQwen3`, in place, with TransformerLens' method names.

    Inside these methods, `fold_layer_norm(...)` and `center_unembed(...)` are this module's
    state-dict functions (a method's own name is not in scope in its body); `process_weights_`
    takes TransformerLens' option names, which shadow them, so it calls only the `*_updates` steps.
    """

    def process_weights_(
        self,
        fold_ln: bool = True,
        center_writing_weights: bool = False,
        center_unembed: bool = False,
        fold_value_biases: bool = False,
        refactor_factored_attn_matrices: bool = False,
    ) -> WeightProcessingMixin:
        """TransformerLens' weight processing, in place; the function computed stays the same.

        `fold_ln` folds every RMSNorm weight into the matrices that read it (see
        `gated_interp.weight_processing`), sets the norm weights to ones and
        `cfg.normalization_type` to "RMSPre". A tied model is untied first (`W_U` becomes its own
        copy; `W_E` is unchanged). Hook values are unchanged (to float rounding); only weights move.
        `center_unembed` subtracts `W_U`'s mean over the vocabulary (logits shift by a constant per
        position). `fold_value_biases` (ungated models) moves `b_V` into `b_O`. The options
        TransformerLens offers that cannot hold on this architecture raise: `center_writing_weights`
        (RMSNorm does not remove the mean) and `refactor_factored_attn_matrices` (rotary).
        """
        if center_writing_weights:
            raise ValueError(CENTER_WRITING_WEIGHTS_UNSUPPORTED)
        if refactor_factored_attn_matrices:
            raise ValueError(REFACTOR_UNSUPPORTED)
        if fold_value_biases:
            refuse_gated_value_bias_fold(self.cfg)  # before any change
        if self.unembed.tied and needs_own_unembedding(
            self.state_dict(), fold_ln, center_unembed, self.cfg.zero_centred_norms
        ):
            self.unembed.untie()
            self.cfg.tie_word_embeddings = False
        steps = [
            (fold_ln, lambda state: fold_layer_norm_updates(state, self.cfg, in_place=True)),
            (center_unembed, lambda state: center_unembed_updates(state, in_place=True)),
            (fold_value_biases, lambda state: fold_value_biases_updates(state, self.cfg)),
        ]
        with torch.no_grad():
            for wanted, updates in steps:
                if wanted:
                    state = self.state_dict()  # views of the live tensors
                    for name, value in updates(state):
                        if value.data_ptr() != state[name].data_ptr():
                            state[name].copy_(value)
        if fold_ln:
            self.cfg.normalization_type = "RMSPre"
        return self

    def fold_layer_norm(
        self, state_dict: dict[str, Tensor] | None = None, fold_biases: bool = False, center_weights: bool = False
    ) -> WeightProcessingMixin | dict[str, Tensor]:
        """Fold the RMSNorm weights into the weights that read them. Without `state_dict`, folds
        this model in place (as `process_weights_(fold_ln=True)`) and returns it; with one (TL
        2.x's form), returns a folded copy of that state dict and leaves the model alone."""
        if fold_biases or center_weights:
            raise ValueError(
                "fold_biases/center_weights apply to LayerNorm only: RMSNorm has no bias and does not "
                "subtract the mean (TransformerLens folds RMSNorm with both off). Leave them False."
            )
        if state_dict is not None:
            return fold_layer_norm(state_dict, self.cfg)
        return self.process_weights_(fold_ln=True)

    def center_unembed(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """TL 2.x's state-dict form: a copy with `W_U`, `b_U` centred over the vocabulary."""
        return center_unembed(state_dict)

    def fold_value_biases(
        self, state_dict: dict[str, Tensor] | None = None
    ) -> WeightProcessingMixin | dict[str, Tensor]:
        """`b_V` moved into `b_O` (ungated models; a gated model raises, naming why). Without
        `state_dict`, folds this model in place and returns it; with one (TL 2.x's form), returns a
        folded copy of that state dict and leaves the model alone."""
        if state_dict is not None:
            return fold_value_biases(state_dict, self.cfg)
        return self.process_weights_(fold_ln=False, fold_value_biases=True)

    def center_writing_weights(self, state_dict: dict[str, Tensor] | None = None) -> None:
        """TransformerLens' method, which cannot hold for RMSNorm: it raises, saying why."""
        raise ValueError(CENTER_WRITING_WEIGHTS_UNSUPPORTED)

    def refactor_factored_attn_matrices(self, state_dict: dict[str, Tensor] | None = None) -> None:
        """TransformerLens' method, which cannot hold with rotary: it raises, saying why."""
        raise ValueError(REFACTOR_UNSUPPORTED)
