"""The rest of `HookedTransformer`'s surface that libraries built on TransformerLens call.

A mixin of `HookedGatedQwen3`: `from_pretrained` / `from_pretrained_no_processing` (which are
`load_hooked` with and without folding), `input_to_embed`, `get_residual`, `get_pos_offset`,
`move_model_modules_to_device`, `mps`; and the refusal of TransformerLens' own key-value cache,
whose keys are stored before rotary (ours after), so it cannot be fed to this model.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

from gated_interp.components import KVCacheEntry, RecurrentState
from gated_interp.config import N_DEVICES_UNSUPPORTED
from gated_interp.masks import Mask

TL_KV_CACHE_REFUSED = (
    "past_kv_cache is TransformerLens' TransformerLensKeyValueCache, which this model cannot use: it "
    "stores keys before rotary, this model's cache stores them after. Use model.generate(...), which "
    "keeps its own cache, or pass a list of gated_interp.components.KVCacheEntry, one per layer "
    "(empty: keys and values of shape [batch, 0, n_key_value_heads, d_head]; a RecurrentState() on "
    "a hybrid model's linear-attention layers)."
)


def check_kv_cache(past_kv_cache: Any) -> None:
    """Refuse TransformerLens' key-value cache (or anything but a list of `KVCacheEntry` /
    `RecurrentState`, one per layer) by name."""
    if past_kv_cache is None:
        return
    if isinstance(past_kv_cache, TransformerLensKeyValueCache):
        raise TypeError(TL_KV_CACHE_REFUSED)
    if not isinstance(past_kv_cache, (list, tuple)) or not all(
        isinstance(e, (KVCacheEntry, RecurrentState)) for e in past_kv_cache
    ):
        raise TypeError(
            "past_kv_cache must be a list with one gated_interp.components.KVCacheEntry per full-attention "
            f"layer and one RecurrentState per linear-attention layer, got "
            f"{type(past_kv_cache).__name__}"
        )


class TransformerLensCompatMixin:
    """TransformerLens' loading, embedding and device helpers, under their names."""

    @classmethod
    def from_pretrained(
        cls,
        model_name: str | os.PathLike,
        *,
        fold_ln: bool = True,
        center_writing_weights: bool = False,
        center_unembed: bool = False,
        refactor_factored_attn_matrices: bool = False,
        fold_value_biases: bool = False,
        device: str | None = None,
        n_devices: int = 1,
        dtype: torch.dtype | None = None,
        size: str = "1B",
        progress: bool | None = None,
        device_map: Any = None,
        max_memory: dict[Any, Any] | None = None,
        offload_folder: str | os.PathLike | None = None,
    ) -> Any:
        """`gated_interp.load_hooked(model_name, ...)`, under TransformerLens' name and options.
        A model bigger than one device takes `device_map` (with `max_memory`, `offload_folder`), as
        TransformerLens 3.x's bridge does, instead of `n_devices`.

        `model_name` is a variant (`"gate_headwise"`, ...; `size="tiny"` for the bundled models) or
        a checkpoint folder. Unlike TransformerLens, `center_writing_weights` and `center_unembed`
        are off by default: the first cannot hold for RMSNorm (it raises, saying why), the second
        would shift the released model's logits.
        """
        if n_devices != 1:
            raise ValueError(N_DEVICES_UNSUPPORTED)
        from gated_interp.loading.load import load_hooked  # loading builds this class: imported late

        return load_hooked(
            model_name,
            size=size,
            device=device,
            dtype=dtype,
            progress=progress,
            fold_ln=fold_ln,
            center_unembed=center_unembed,
            fold_value_biases=fold_value_biases,
            center_writing_weights=center_writing_weights,
            refactor_factored_attn_matrices=refactor_factored_attn_matrices,
            device_map=device_map,
            max_memory=max_memory,
            offload_folder=offload_folder,
        )

    @classmethod
    def from_pretrained_no_processing(cls, model_name: str | os.PathLike, **kwargs: Any) -> Any:
        """`from_pretrained` with every weight as stored (`load_hooked(..., fold_ln=False)`)."""
        return cls.from_pretrained(model_name, **{"fold_ln": False, **kwargs})

    def input_to_embed(
        self,
        input: Any,
        prepend_bos: bool | None = None,
        padding_side: str | None = None,
        attention_mask: Mask[Tensor, "batch pos"] | None = None,
        past_kv_cache: list[KVCacheEntry | RecurrentState] | None = None,
    ) -> tuple[Float[Tensor, "batch pos d_model"], Int[Tensor, "batch pos"], None, Int[Tensor, "batch pos"] | None]:
        """`(residual, tokens, shortformer_pos_embed, attention_mask)` as TransformerLens returns
        them: the residual entering block 0 (`hook_embed`'s value; rotary adds no positional
        stream, so `shortformer_pos_embed` is None). `model(residual, start_at_layer=0,
        attention_mask=attention_mask)` resumes the pass."""
        check_kv_cache(past_kv_cache)
        if past_kv_cache:
            raise ValueError("input_to_embed with a past_kv_cache: run model(tokens, past_kv_cache=...) instead")
        tokens, mask = self._as_tokens(input, attention_mask, prepend_bos, padding_side)
        residual = self(tokens, attention_mask=mask, stop_at_layer=0)
        return residual, tokens, None, mask

    def get_residual(
        self,
        embed: Float[Tensor, "batch pos d_model"],
        pos_offset: int = 0,
        prepend_bos: bool | None = None,
        padding_side: str | None = None,
        tokens: Int[Tensor, "batch pos"] | None = None,
        attention_mask: Mask[Tensor, "batch pos"] | None = None,
    ) -> tuple[Float[Tensor, "batch pos d_model"], None]:
        """`(residual, shortformer_pos_embed)` for rotary models, as TransformerLens: the
        embedding itself and None (positions enter through rotary inside attention)."""
        return embed, None

    def get_pos_offset(self, past_kv_cache: list[KVCacheEntry | RecurrentState] | None, batch_size: int) -> int:
        """Positions already in `past_kv_cache` (0 without one), checked against `batch_size`."""
        check_kv_cache(past_kv_cache)
        if not past_kv_cache:
            return 0
        # Full-attention layers hold keys; a linear-attention layer's state only counts positions.
        attention = [entry for entry in past_kv_cache if isinstance(entry, KVCacheEntry)]
        if attention:
            cached_batch, offset = attention[0].keys.shape[:2]
        else:
            state = past_kv_cache[0]
            cached_batch = batch_size if state.conv is None else state.conv.shape[0]
            offset = state.n_seen
        if cached_batch != batch_size:
            raise ValueError(f"past_kv_cache holds a batch of {cached_batch}, the input one of {batch_size}")
        return offset

    def move_model_modules_to_device(self) -> None:
        """Every parameter and buffer to `cfg.device` (one device: there is no split to follow)."""
        self.to(self.cfg.device)

    def mps(self) -> Any:
        """The model on Apple's MPS device, `cfg.device` in step."""
        return self.to(torch.device("mps"))
