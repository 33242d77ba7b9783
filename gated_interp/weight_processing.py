"""TransformerLens' weight processing, for an RMSNorm model with an attention-output gate.

Each function takes a state dict with TransformerLens' keys (`blocks.{l}.attn.W_Q`, `_W_K`, `_W_V`,
`W_G`, `blocks.{l}.mlp.W_gate`, `W_in`, `unembed.W_U`, ...) and returns a new one; the input
is never modified. `HookedGatedQwen3.process_weights_` applies them to a model in place.

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

import torch
from jaxtyping import Float
from torch import Tensor

from gated_interp.config import GatedQwen3Config

StateDict = dict[str, Tensor]


def _scaled(weight: Tensor, scale: Tensor) -> Tensor:
    """`weight * scale` computed in at least float32 and returned in the weight's dtype, so a
    half-precision weight is rounded once, after the product."""
    work = torch.promote_types(weight.dtype, torch.float32)
    return (weight.to(work) * scale.to(work)).to(weight.dtype)


def _fold_rows(weight: Float[Tensor, "*head d_model out"], w: Float[Tensor, "d_model"]) -> Tensor:
    """`weight` reads `w * x`: scale its `d_model` rows by `w`."""
    return _scaled(weight, w[:, None])


def unembedding(state_dict: StateDict) -> Float[Tensor, "d_model d_vocab"]:
    """`unembed.W_U`, or `embed.W_E.T` for a tied model's state dict (which has no `unembed.W_U`)."""
    return state_dict["unembed.W_U"] if "unembed.W_U" in state_dict else state_dict["embed.W_E"].T


def fold_layer_norm(state_dict: StateDict, cfg: GatedQwen3Config) -> StateDict:
    """Norm weights folded into the matrices that read each norm; every norm weight becomes ones.

    A tied model's state dict gains its own `unembed.W_U` (the embedding is not touched), unless
    `ln_final.w` is already all ones.
    """
    out = dict(state_dict)
    readers_of_ln1 = ("W_Q", "_W_K", "_W_V") + (("W_G",) if cfg.gate != "none" else ())
    for layer in range(cfg.n_layers):
        block = f"blocks.{layer}"
        ln1, ln2 = out[f"{block}.ln1.w"], out[f"{block}.ln2.w"]
        for name in readers_of_ln1:
            out[f"{block}.attn.{name}"] = _fold_rows(out[f"{block}.attn.{name}"], ln1)
        for name in ("W_gate", "W_in"):
            out[f"{block}.mlp.{name}"] = _fold_rows(out[f"{block}.mlp.{name}"], ln2)
        out[f"{block}.ln1.w"], out[f"{block}.ln2.w"] = torch.ones_like(ln1), torch.ones_like(ln2)
    final = out["ln_final.w"]
    if "unembed.W_U" in out or not bool((final == 1).all()):
        out["unembed.W_U"] = _fold_rows(unembedding(out), final)
    out["ln_final.w"] = torch.ones_like(final)
    return out


def center_unembed(state_dict: StateDict) -> StateDict:
    """`W_U` and `b_U` minus their mean over the vocabulary (a tied model gains `unembed.W_U`)."""
    out = dict(state_dict)
    W_U = unembedding(out)
    work = torch.promote_types(W_U.dtype, torch.float32)
    out["unembed.W_U"] = (W_U.to(work) - W_U.to(work).mean(-1, keepdim=True)).to(W_U.dtype)
    b_U = out["unembed.b_U"]
    out["unembed.b_U"] = (b_U.to(work) - b_U.to(work).mean()).to(b_U.dtype)
    return out


def fold_value_biases(state_dict: StateDict, cfg: GatedQwen3Config) -> StateDict:
    """`b_V` moved into `b_O` (`b_O += sum_h b_V[h] @ W_O[h]`, `b_V = 0`); ungated models only."""
    if cfg.gate != "none":
        raise ValueError(
            f"fold_value_biases cannot apply to a gated model (gate={cfg.gate!r}): the gate scales each "
            "head's value-bias contribution per query, so it is not a constant that b_O could absorb. "
            "Leave fold_value_biases=False."
        )
    out = dict(state_dict)
    for layer in range(cfg.n_layers):
        attn = f"blocks.{layer}.attn"
        b_V = out[f"{attn}._b_V"].repeat_interleave(cfg.n_groups, dim=0)  # [head, d_head]
        W_O, b_O = out[f"{attn}.W_O"], out[f"{attn}.b_O"]
        work = torch.promote_types(W_O.dtype, torch.float32)
        through_O = torch.einsum("hd,hdm->m", b_V.to(work), W_O.to(work))
        out[f"{attn}.b_O"] = (b_O.to(work) + through_O).to(b_O.dtype)
        out[f"{attn}._b_V"] = torch.zeros_like(out[f"{attn}._b_V"])
    return out
