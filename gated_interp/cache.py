"""`ActivationCache` whose keys are read off the one hook table (`gated_interp.hooks`).

`cache["gate", 3]`, `cache["gate3"]`, `cache[utils.get_act_name("gate", 3)]` and
`cache["blocks.3.attn.hook_gate"]` are the same tensor, as `cache["z", 3]` already is in
TransformerLens; every method that builds a new cache keeps this class.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Union

from torch import Tensor
from transformer_lens import ActivationCache
from transformer_lens.utilities import get_act_name

from gated_interp import hooks

# What functions that read activations accept: a `run_with_cache` cache (TransformerLens'
# `ActivationCache` is not a `Mapping`) or a plain dict from hook name to activation.
CacheLike = Union[ActivationCache, Mapping[str, Tensor]]


class GatedActivationCache(ActivationCache):
    """An `ActivationCache` that also answers the gate's (and every other table hook's) short keys."""

    def _key(self, key: Any) -> str:
        if isinstance(key, tuple):
            if key and isinstance(key[0], str) and len(key) > 1 and isinstance(key[1], int) and key[1] < 0:
                key = (key[0], key[1] + self.model.cfg.n_layers, *key[2:])
            name = get_act_name(*key)
        elif isinstance(key, str):
            name = get_act_name(key)  # "gate3" → blocks.3.hook_gate; full names pass through
        else:
            raise KeyError(f"cache keys are hook names or (name, layer) tuples, got {key!r}")
        return hooks.resolve(name)

    def __getitem__(self, key: Any) -> Tensor:
        if isinstance(key, str) and key in self.cache_dict:
            return self.cache_dict[key]
        name = self._key(key)
        if name not in self.cache_dict:
            found = hooks.lookup(name)
            hint = ""
            if found is not None and found[0].absent_because(self.model.cfg, found[1]):
                hint = f" (this model has no such hook: {found[0].absent_because(self.model.cfg, found[1])})"
            elif found is not None and found[0].switch:
                hint = f" (it fires only after model.set_{found[0].switch}(True))"
            elif hooks.tl2_name_note(name) is not None:
                hint = f": {hooks.tl2_name_note(name)}"
            raise KeyError(f"{key!r} → {name!r} is not in the cache{hint}")
        return self.cache_dict[name]

    def __contains__(self, key: Any) -> bool:
        try:
            return self._key(key) in self.cache_dict
        except Exception:
            return False

    def apply_slice_to_batch_dim(self, batch_slice: Any) -> GatedActivationCache:
        cache = super().apply_slice_to_batch_dim(batch_slice)
        return GatedActivationCache(cache.cache_dict, self.model, has_batch_dim=cache.has_batch_dim)
