"""Weights as TransformerLens shows them: stacked over layers (`model.W_Q [layer, head, d_model,
d_head]`, ...), the factored circuits `OV` and `QK`, `tl_parameters()`, and the helpers that read
weights (`tokens_to_residual_directions`, `accumulated_bias`, `all_composition_scores`).

A mixin of `HookedGatedQwen3`: it reads `self.blocks` (each with `attn` and `mlp`), `self.embed`,
`self.unembed`, `self.ln_final` and `self.cfg`. Views are computed on each access, so they always
show the live weights (folded or not, on whatever device).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import FactoredMatrix
from transformer_lens.utilities import composition_scores


class _Stacked:
    """One weight of every block stacked on a new first axis (a read-only view), with its shape."""

    def __init__(self, part: Literal["attn", "mlp"], annotation: Any, gated_only: bool = False):
        self.part, self.annotation, self.gated_only = part, annotation, gated_only

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name
        self.__doc__ = f"`blocks[l].{self.part}.{name}` of every layer, `[{self.annotation.dim_str}]`."

    def __get__(self, model: Any, owner: type | None = None) -> Any:
        if model is None:
            return self
        refusal = _refusal(model, self.name, self.part, self.gated_only)
        if refusal:
            raise AttributeError(refusal)  # nn.Module.__getattr__ drops this message: see WeightViewsMixin.__getattr__
        stacked = torch.stack([getattr(getattr(block, self.part), self.name) for block in model.blocks], dim=0)
        # A descriptor has no return annotation for the test suite's jaxtyping checks: check here.
        assert isinstance(stacked, self.annotation), f"{self.name}: {tuple(stacked.shape)} is not {self.annotation}"
        return stacked


def _refusal(model: Any, name: str, part: str, gated_only: bool = False) -> str | None:
    """Why `model.{name}` (stacked over layers from each block's `part`) cannot exist, or None."""
    cfg = model.cfg
    if gated_only and not cfg.is_gated:
        return f"this model has no attention-output gate (cfg.gate == 'none'), so no {name}"
    if part == "attn" and cfg.linear_attention_layers:
        per_layer = {"OV": "W_V and .W_O", "QK": "W_Q and .W_K"}.get(name, name)
        return (
            f"model.{name} stacks one attention weight per layer, but layers {list(cfg.linear_attention_layers)} "
            f"are linear_attention (Gated DeltaNet) layers, without one: use model.blocks[l].attn.{per_layer} on "
            f"the full_attention layers {list(cfg.full_attention_layers)} (model.cfg.layer_types), or "
            "model.blocks[l].linear_attn's weights on the others"
        )
    if part == "mlp" and cfg.moe_layers:
        return (
            f"model.{name} stacks one MLP weight per layer, but layers {list(cfg.moe_layers)} are mixtures of "
            f"experts: use model.blocks[l].mlp.{name} ([expert, ...] on those layers, cfg.mlp_kind(l))"
        )
    return None


# Views built from the attention weights of every layer, refused the same way as the stacks.
_ATTN_VIEWS = ("OV", "QK")


class WeightViewsMixin:
    """TransformerLens' weight attributes and the helpers that read them."""

    def __getattr__(self, name: str) -> Any:
        # Reached when normal lookup fails, including when a view above raised AttributeError:
        # nn.Module.__getattr__ would answer "no attribute", losing why and what to use instead.
        view = WeightViewsMixin.__dict__.get(name)
        if isinstance(view, _Stacked) or name in _ATTN_VIEWS:
            part, gated_only = (view.part, view.gated_only) if isinstance(view, _Stacked) else ("attn", False)
            refusal = _refusal(self, name, part, gated_only)
            if refusal:
                raise AttributeError(refusal)
        return super().__getattr__(name)

    # The stacked weights, one line each. Key-value weights are expanded to one copy per query
    # head (`blocks[l].attn.W_K`), as TransformerLens shows grouped-query attention.
    W_Q = _Stacked("attn", Float[Tensor, "layer head d_model d_head"])
    W_K = _Stacked("attn", Float[Tensor, "layer head d_model d_head"])
    W_V = _Stacked("attn", Float[Tensor, "layer head d_model d_head"])
    W_O = _Stacked("attn", Float[Tensor, "layer head d_head d_model"])
    W_G = _Stacked("attn", Float[Tensor, "layer head d_model gate"], gated_only=True)
    b_Q = _Stacked("attn", Float[Tensor, "layer head d_head"])
    b_K = _Stacked("attn", Float[Tensor, "layer head d_head"])
    b_V = _Stacked("attn", Float[Tensor, "layer head d_head"])
    b_O = _Stacked("attn", Float[Tensor, "layer d_model"])
    b_G = _Stacked("attn", Float[Tensor, "layer head gate"], gated_only=True)
    W_gate = _Stacked("mlp", Float[Tensor, "layer d_model d_mlp"])
    W_in = _Stacked("mlp", Float[Tensor, "layer d_model d_mlp"])
    W_out = _Stacked("mlp", Float[Tensor, "layer d_mlp d_model"])
    b_gate = _Stacked("mlp", Float[Tensor, "layer d_mlp"])
    b_in = _Stacked("mlp", Float[Tensor, "layer d_mlp"])
    b_out = _Stacked("mlp", Float[Tensor, "layer d_model"])

    @property
    def W_E(self) -> Float[Tensor, "d_vocab d_model"]:
        return self.embed.W_E

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        return self.unembed.W_U

    @property
    def b_U(self) -> Float[Tensor, "d_vocab"]:
        return self.unembed.b_U

    @property
    def OV(self) -> FactoredMatrix:
        """`W_V @ W_O` per layer and head, `[layer, head, d_model, d_model]` (factored)."""
        return FactoredMatrix(self.W_V, self.W_O)

    @property
    def QK(self) -> FactoredMatrix:
        """`W_Q @ W_K.T` per layer and head, `[layer, head, d_model, d_model]` (factored)."""
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    def tl_parameters(self) -> dict[str, Tensor]:
        """Every weight and bias under TransformerLens' names, for tools that read a parameter
        dict (`transformer_lens.SVDInterpreter`): the state dict plus the per-query-head
        `blocks.{l}.attn.W_K`/`W_V`/`b_K`/`b_V` and, for tied models, `unembed.W_U`."""
        params: dict[str, Tensor] = dict(self.state_dict(keep_vars=True))
        for layer, block in enumerate(self.blocks):
            for name in ("W_K", "W_V", "b_K", "b_V"):
                params[f"blocks.{layer}.attn.{name}"] = getattr(block.attn, name)
        params.setdefault("unembed.W_U", self.W_U)
        return params

    def tokens_to_residual_directions(
        self, tokens: str | int | Int[Tensor, ""] | Int[Tensor, "pos"] | Int[Tensor, "batch pos"]
    ) -> Float[Tensor, "... d_model"]:
        """Unembedding directions of tokens: `ln_final.w * W_U[:, token]`, shape `[*tokens.shape, d_model]`
        (`[d_model]` for a single token, even in a tensor of shape `[1]`, as in TransformerLens).

        A residual vector divided by `ln_final.hook_scale` dotted with this gives the token's logit
        (minus `b_U`), so `ActivationCache.logit_attrs` is exact whether or not the norms are folded.
        On a folded model (the default of `load_hooked`) `ln_final.w` is all ones and this is
        exactly `W_U[:, token]`, as in TransformerLens; on a raw model (`fold_ln=False`) the weight
        TransformerLens would have folded into `W_U` is applied here instead, never twice.
        """
        if isinstance(tokens, str):
            tokens = self.to_single_token(tokens)
        tokens = torch.as_tensor(tokens, device=self.cfg.device)
        if tokens.numel() == 1:
            tokens = tokens.reshape(())  # one token gives one direction, as in TransformerLens
        directions = (self.ln_final.w[:, None] * self.W_U)[:, tokens]
        return directions.movedim(0, -1)

    def accumulated_bias(
        self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True
    ) -> Float[Tensor, "d_model"]:
        """Sum of the biases written into the residual stream before block `layer`'s attention
        (`b_O` and `mlp.b_out` of blocks `0..layer-1`), or before its MLP with `mlp_input=True`
        (adding block `layer`'s `b_O`). `layer` runs from 0 to n_layers, as in TransformerLens."""
        n_layers = self.cfg.n_layers
        if not 0 <= layer <= n_layers:
            raise IndexError(f"layer {layer} is out of range: accumulated_bias takes 0..{n_layers} (n_layers)")
        total = torch.zeros(self.cfg.d_model, dtype=self.cfg.dtype, device=self.cfg.device)
        for block in self.blocks[:layer]:
            total = total + block.attn.b_O
            if include_mlp_biases:
                total = total + block.mlp.b_out
        if mlp_input:
            if layer == n_layers:
                raise AssertionError("Cannot include attn_bias from beyond the final layer")
            total = total + self.blocks[layer].attn.b_O
        return total

    def all_head_labels(self) -> list[str]:
        """`["L0H0", "L0H1", ...]`, layer-major, 0-based: TransformerLens' head labels."""
        return [f"L{layer}H{head}" for layer in range(self.cfg.n_layers) for head in range(self.cfg.n_heads)]

    def all_composition_scores(self, mode: Literal["Q", "K", "V"]) -> Float[Tensor, "layer head layer head"]:
        """Composition scores of every (earlier head's OV, later head's Q/K/V input) pair, as
        TransformerLens: `scores[l1, h1, l2, h2] = |OV_1 @ M_2|_F / (|OV_1|_F |M_2|_F)` with
        `M = QK` (mode "Q"), `QK.T` ("K") or `OV` ("V"), and 0 unless `l1 < l2`. Key-value heads
        are expanded per query head; like `OV` and `QK`, the weights ignore the gate, q/k norm
        and rotary (Elhage et al. 2021 define the score on the weights alone)."""
        left = self.OV
        if mode == "Q":
            right = self.QK
        elif mode == "K":
            right = self.QK.T
        elif mode == "V":
            right = self.OV
        else:
            raise ValueError(f"mode must be one of ['Q', 'K', 'V'] not {mode}")
        scores = composition_scores(left, right, broadcast_dims=True)
        layers = torch.arange(self.cfg.n_layers, device=scores.device)
        earlier = layers[:, None, None, None] < layers[None, None, :, None]
        return torch.where(earlier, scores, torch.zeros_like(scores))
