"""`HookedGatedQwen3`: Qwen3 with optional attention-output gating, on TransformerLens' hooks.

It behaves like a `transformer_lens.HookedTransformer`: the same hook names, cache keys, weight
shapes and call signatures (`forward`, `run_with_cache`, `run_with_hooks`, `to_tokens`, `generate`,
...), so that `ActivationCache` methods and `transformer_lens.patching` work on it unchanged.
This module holds the model itself (construction, device and dtype, forward, masks, loss); the
TransformerLens surface lives in one module per concern (see the class docstring).
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal, NamedTuple, Optional, Union

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.hook_points import HookPoint
from transformer_lens.utilities import lm_cross_entropy_loss

from gated_interp.components import (
    Embed,
    KVCacheEntry,
    RecurrentState,
    RMSNorm,
    RotaryEmbedding,
    TransformerBlock,
    Unembed,
)
from gated_interp.config import INIT_STD, N_DEVICES_UNSUPPORTED, GatedQwen3Config
from gated_interp.generation import GenerationMixin
from gated_interp.hooked_root import HookedRoot
from gated_interp.masks import Mask, check_attention_mask
from gated_interp.tl_compat import TransformerLensCompatMixin, check_kv_cache
from gated_interp.tokenization import ModelInput, PaddingSide, TokenizationMixin
from gated_interp.weight_processing import WeightProcessingMixin
from gated_interp.weight_views import WeightViewsMixin

__all__ = ["ForwardInput", "HookedGatedQwen3", "ModelInput", "Output", "PaddingSide", "ReturnType"]

# `forward` also takes the residual stream entering block n, with `start_at_layer=n`.
ForwardInput = Union[ModelInput, Float[Tensor, "batch pos d_model"]]
ReturnType = Optional[Literal["logits", "loss", "both"]]


class Output(NamedTuple):
    """`forward(..., return_type="both")`: TransformerLens 2.x's `Output(logits, loss)`
    (TransformerLens 4.x no longer ships one; unpacks as a tuple either way)."""

    logits: Float[Tensor, "batch pos d_vocab"]
    loss: Float[Tensor, ""] | Float[Tensor, "batch pos-1"]


class HookedGatedQwen3(
    TokenizationMixin,
    GenerationMixin,
    WeightViewsMixin,
    WeightProcessingMixin,
    TransformerLensCompatMixin,
    HookedRoot,
):
    """Qwen3 (RMSNorm, rotary, grouped-query attention, q/k norm, SwiGLU) whose attention output
    may be scaled by a sigmoid gate (`cfg.gate`: "none", "headwise" or "elementwise"); with
    `cfg.layer_types`, also the Qwen3.5 / Qwen3-Next hybrids (Gated DeltaNet layers between gated
    full-attention ones, dense or MoE MLPs).

    Where each part lives:
    - here (`gated_interp.model`): construction, `init_weights`, device/dtype (`to`), `forward`
      (with `start_at_layer` / `stop_at_layer` / `past_kv_cache`), the attention mask, `loss_fn`;
    - `gated_interp.components`: the blocks; `components.attention` is plain attention plus the gate,
      `components.linear_attention` the Gated DeltaNet, `components.moe` the sparse MoE MLP;
    - `gated_interp.hooked_root.HookedRoot`: hook plumbing: the per-model lock, the `set_use_*`
      switches, hook-name resolution (`gated_interp.hooks` is the table of every hook),
      `run_with_cache`, `run_with_hooks`, `add_hook` and their warnings;
    - `gated_interp.tokenization.TokenizationMixin`: `to_tokens`, `to_str_tokens`, `to_string`,
      `to_single_token`, `get_token_position`, `set_tokenizer`, and input → (tokens, mask);
    - `gated_interp.generation.GenerationMixin`: `generate` and its key-value (and recurrent) cache;
    - `gated_interp.weight_views.WeightViewsMixin`: stacked `W_Q`, ..., `b_out`, `W_E`, `W_U`,
      `OV`, `QK`, `tl_parameters`, `tokens_to_residual_directions`, `accumulated_bias`,
      `all_head_labels`, `all_composition_scores`;
    - `gated_interp.weight_processing.WeightProcessingMixin`: `process_weights_`,
      `fold_layer_norm`, `center_unembed`, `fold_value_biases` (the state-dict functions sit beside it);
    - `gated_interp.tl_compat.TransformerLensCompatMixin`: `from_pretrained` (= `load_hooked`),
      `input_to_embed`, `get_residual`, `get_pos_offset`, `move_model_modules_to_device`, `mps`.
    """

    def __init__(self, cfg: GatedQwen3Config, tokenizer: Any = None):
        super().__init__()
        self.cfg = cfg
        # cfg.default_prepend_bos left None follows the tokenizer (see the `tokenizer` setter)
        self._explicit_prepend_bos = cfg.default_prepend_bos is not None
        self.tokenizer = tokenizer
        if cfg.n_devices != 1:
            raise ValueError(N_DEVICES_UNSUPPORTED)
        self.embed = Embed(cfg)
        self.hook_tokens = HookPoint()  # [batch, pos], with cfg.use_hook_tokens
        self.hook_embed = HookPoint()  # [batch, pos, d_model]
        self.rotary = RotaryEmbedding(cfg.rotary_dim, cfg.rope_theta, cfg.rope_scaling)
        self.blocks = nn.ModuleList(TransformerBlock(cfg, layer) for layer in range(cfg.n_layers))
        self.ln_final = RMSNorm(cfg.d_model, cfg.rms_norm_eps, cfg.dtype, zero_centred=cfg.zero_centred_norms)
        self.unembed = Unembed(cfg, self.embed)
        self.setup()
        self.to(cfg.device)

    # ---- set-up --------------------------------------------------------------------------
    def init_weights(self, seed: int = 0, std: float = INIT_STD) -> HookedGatedQwen3:
        """Random initialisation for training from scratch: normal(0, std) matrices, output
        projections scaled by 1/sqrt(2 n_layers) (GPT-2 style, for a stable residual stream at
        init), unit norm weights, zero biases."""
        for name, param in self.named_parameters():
            # One generator per parameter, seeded by its name: the weights that a baseline and a
            # gated variant share start identical, whatever extra (gate) parameters exist.
            generator = torch.Generator().manual_seed(_name_seed(seed, _SEED_NAMES.get(name, name)))
            if name.endswith(".w"):  # norm weights: the identity (1 + w with w = 0 for zero-centred norms)
                values = torch.zeros(param.shape) if self.cfg.zero_centred_norms else torch.ones(param.shape)
            elif name.endswith(("linear_attn.norm_w", "linear_attn.dt_bias")):
                values = torch.ones(param.shape)
            elif param.ndim == 1 or name.split(".")[-1].startswith(("b_", "_b_")):
                values = torch.zeros(param.shape)
            else:
                scale = std / (2 * self.cfg.n_layers) ** 0.5 if name.endswith(("W_O", "W_out")) else std
                values = torch.randn(param.shape, generator=generator) * scale
            with torch.no_grad():
                param.copy_(values.to(param.dtype))
        with torch.no_grad():
            for name, buffer in self.named_buffers():
                if name.rsplit(".", 1)[-1].lstrip("_").startswith("b_"):  # the zero biases
                    buffer.zero_()
        return self

    def to(self, *args: Any, print_details: bool = False, **kwargs: Any) -> HookedGatedQwen3:
        """`nn.Module.to`; `print_details` is accepted for TransformerLens' signature and ignored."""
        return super().to(*args, **kwargs)

    def _apply(self, fn: Any, recurse: bool = True) -> HookedGatedQwen3:
        # Every way of moving or casting parameters (`to`, `half`, `bfloat16`, `float`, `cuda`,
        # `cpu`, ...) ends here: keep cfg in step, since the KV cache and transformer_lens.patching
        # build tensors from cfg.dtype and cfg.device.
        super()._apply(fn, recurse)
        self.cfg.device = str(self.W_E.device)
        self.cfg.dtype = self.W_E.dtype
        return self

    # ---- forward -------------------------------------------------------------------------
    @staticmethod
    def _attention_mask_4d(
        attention_mask: Mask[Tensor, "batch k_pos"], n_queries: int
    ) -> Bool[Tensor, "batch 1 q_pos k_pos"]:
        """Causal, padding keys hidden; a padding query still reads itself so that no softmax row
        is empty (its output is never used)."""
        n_keys = attention_mask.shape[1]
        device = attention_mask.device
        query_at = torch.arange(n_keys - n_queries, n_keys, device=device)[:, None]
        key_at = torch.arange(n_keys, device=device)[None, :]
        causal = key_at <= query_at
        visible = attention_mask.bool()[:, None, None, :] | (key_at == query_at)
        return causal & visible

    def forward(
        self,
        input: ForwardInput,
        return_type: ReturnType = "logits",
        loss_per_token: bool = False,
        prepend_bos: bool | None = None,
        attention_mask: Mask[Tensor, "batch pos"] | None = None,
        stop_at_layer: int | None = None,
        # TransformerLens' cache is in the annotation only so that it reaches the refusal naming it.
        past_kv_cache: list[KVCacheEntry | RecurrentState] | TransformerLensKeyValueCache | None = None,
        past_attention_mask: Mask[Tensor, "batch past_pos"] | None = None,
        start_at_layer: int | None = None,
        tokens: Int[Tensor, "batch pos"] | None = None,
        padding_side: PaddingSide | None = None,
    ) -> Any:
        """Logits `[batch, pos, d_vocab]`, loss, both (`Output(logits, loss)`), or None.

        `attention_mask` marks real tokens (1) and padding (0); padded batches give each sequence
        the same result as its unpadded run. With `stop_at_layer=n`, returns the residual stream
        entering block n (`[batch, pos, d_model]`) instead. `past_kv_cache` (one entry per layer,
        extended in place) lets `generate` feed one new token at a time. With `start_at_layer=n`,
        `input` is the residual stream entering block n (`[batch, pos, d_model]`, e.g. from
        `stop_at_layer=n`) and the earlier blocks are skipped; pass `tokens` for a loss.

        Padding follows TransformerLens: strings are padded on `padding_side` and their padding
        is masked; a token tensor left-padded with the pad token (`padding_side="left"` or
        `cfg.default_padding_side`) gets the mask derived from its leading pads; a right-padded
        tensor without a mask runs unmasked, and its loss counts the padding (with a warning).
        Strings longer than `cfg.n_ctx` are cut to it (with a warning, as TransformerLens does);
        token tensors that long run whole, with a warning that the positions past n_ctx are
        beyond the trained context. A batch of no sequences is refused (its loss would be NaN).
        """
        if return_type not in ("logits", "loss", "both", None):
            raise ValueError(f"return_type must be 'logits', 'loss', 'both' or None, got {return_type!r}")
        check_kv_cache(past_kv_cache)
        if start_at_layer is None:
            given_tensor = not isinstance(input, (str, list, tuple))
            tokens, attention_mask = self._as_tokens(input, attention_mask, prepend_bos, padding_side)
            if given_tensor and return_type in ("loss", "both"):
                self._warn_if_right_padded(tokens, attention_mask)
            if self.cfg.use_hook_tokens:
                tokens = self.hook_tokens(tokens)
            residual = self.hook_embed(self.embed(tokens))
        else:
            residual = self._as_residual(input, attention_mask, past_kv_cache)
            if return_type in ("loss", "both") and tokens is None:
                raise ValueError("a loss from start_at_layer needs the tokens: pass tokens=...")
        n_new = residual.shape[1]
        full_mask = attention_mask
        if past_kv_cache is not None:
            n_past = _cached_length(past_kv_cache[0])
            if full_mask is None:
                full_mask = torch.ones(residual.shape[:2], dtype=torch.long, device=residual.device)
            if past_attention_mask is None:
                past_attention_mask = torch.ones(
                    residual.shape[0], n_past, dtype=full_mask.dtype, device=residual.device
                )
            full_mask = torch.cat([past_attention_mask.to(full_mask), full_mask], dim=1)

        if full_mask is None:
            positions = torch.arange(n_new, device=residual.device)[None].expand(residual.shape[0], -1)
            mask_4d = None
        else:
            positions = (full_mask.cumsum(-1) - 1).clamp(min=0)[:, -n_new:]
            # An all-real, cache-free batch needs no explicit mask: keep the fused causal kernel.
            needs_mask = past_kv_cache is not None or not bool(full_mask.all())
            mask_4d = self._attention_mask_4d(full_mask, n_new) if needs_mask else None

        cos, sin = self.rotary(positions, residual.dtype)
        # Linear-attention layers see padding as zeroed inputs, only where there is padding (as transformers).
        padding_mask = None
        if attention_mask is not None and n_new > 1 and not bool(attention_mask.all()):
            padding_mask = attention_mask.to(residual.device)
        first = start_at_layer or 0
        for layer, block in zip(range(first, self.cfg.n_layers), self.blocks[first:stop_at_layer]):
            past = past_kv_cache[layer] if past_kv_cache is not None else None
            residual = block(residual, cos, sin, mask_4d, past, padding_mask)
        if stop_at_layer is not None:
            return residual

        logits = self.unembed(self.ln_final(residual))
        if return_type == "logits":
            return logits
        if return_type is None:
            return None
        loss = self.loss_fn(logits, tokens, attention_mask, per_token=loss_per_token)
        return loss if return_type == "loss" else Output(logits, loss)

    def _as_residual(
        self, input: Tensor, attention_mask: Tensor | None, past_kv_cache: list[KVCacheEntry | RecurrentState] | None
    ) -> Float[Tensor, "batch pos d_model"]:
        if not isinstance(input, Tensor) or input.ndim != 3 or input.shape[-1] != self.cfg.d_model:
            shape = tuple(input.shape) if isinstance(input, Tensor) else type(input).__name__
            raise ValueError(
                f"with start_at_layer, input must be a residual stream [batch, pos, {self.cfg.d_model}], got {shape}"
            )
        if past_kv_cache is not None:
            raise ValueError("start_at_layer cannot be combined with past_kv_cache")
        if attention_mask is not None:
            check_attention_mask(attention_mask, tuple(input.shape[:2]), of="the residual's [batch, pos]")
        return input.to(self.cfg.device)

    @staticmethod
    def loss_fn(
        logits: Float[Tensor, "batch pos d_vocab"],
        tokens: Int[Tensor, "batch pos"],
        attention_mask: Mask[Tensor, "batch pos"] | None = None,
        per_token: bool = False,
    ) -> Float[Tensor, ""] | Float[Tensor, "batch pos-1"]:
        """Next-token cross-entropy, TransformerLens' `lm_cross_entropy_loss` (in float32):
        predictions of or from padding (mask 0) are zero per token and left out of the mean."""
        if tokens.shape[1] < 2:
            raise ValueError("the loss needs at least two tokens per sequence")
        tokens = tokens.to(logits.device)
        if attention_mask is not None:
            attention_mask = attention_mask.to(logits.device)
        return lm_cross_entropy_loss(logits.float(), tokens, attention_mask, per_token)

    def __repr__(self) -> str:
        c = self.cfg
        return (
            f"HookedGatedQwen3(gate={c.gate!r}, n_layers={c.n_layers}, d_model={c.d_model}, "
            f"n_heads={c.n_heads}, n_key_value_heads={c.n_key_value_heads}, d_head={c.d_head}, "
            f"d_vocab={c.d_vocab}, params={c.n_params / 1e6:.1f}M)"
        )


# The unembedding's parameter was once called `unembed._W_U`; its random initialisation stays
# seeded by that name so that `init_weights(seed)` reproduces the bundled models' starting point.
_SEED_NAMES = {"unembed.W_U": "unembed._W_U"}


def _cached_length(entry: KVCacheEntry | RecurrentState) -> int:
    """Positions a layer's cache entry has already seen."""
    return entry.n_seen if isinstance(entry, RecurrentState) else entry.keys.shape[1]


def _name_seed(seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
