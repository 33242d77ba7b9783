"""`ActivationCache` that also resolves the gate hooks from TransformerLens-style short keys."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Union

from torch import Tensor
from transformer_lens import ActivationCache

# Short names of hooks that live in `blocks.{l}.attn` but that TransformerLens' `get_act_name`
# does not know (it would put them at `blocks.{l}.hook_gate`).
ATTENTION_HOOK_NAMES = frozenset({"gate", "gate_logits", "z_pre_gate", "q_normed", "k_normed"})

# What functions that read activations accept: a `run_with_cache` cache (TransformerLens'
# `ActivationCache` is not a `Mapping`) or a plain dict from hook name to activation.
CacheLike = Union[ActivationCache, Mapping[str, Tensor]]


class GatedActivationCache(ActivationCache):
    """`cache["gate", 20]` is `cache["blocks.20.attn.hook_gate"]`, as `cache["z", 20]` already is."""

    def __getitem__(self, key: Any) -> Tensor:
        if isinstance(key, tuple) and key and key[0] in ATTENTION_HOOK_NAMES:
            layer = key[1] if len(key) > 1 else None
            if layer is None:
                raise KeyError(f"{key[0]!r} is a per-layer attention hook: give a layer, e.g. cache[{key[0]!r}, 0]")
            if layer < 0:
                layer += self.model.cfg.n_layers
            return self.cache_dict[f"blocks.{layer}.attn.hook_{key[0]}"]
        return super().__getitem__(key)
