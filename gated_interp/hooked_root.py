"""`HookedRoot`: TransformerLens' `HookedRootModule` with the hook table's names, switches and warnings.

Everything here is about hooks and knows nothing of Qwen3 or of the gate: the per-model lock that
makes hooks thread-safe, TransformerLens' `use_*` switches, resolution of every spelling in
`gated_interp.hooks` (`get_act_name("gate", 0)`, TL 2.x names) to the real hook name, the caching
hooks (`run_with_cache`, `pos_slice` along each hook's own position axis), and the warnings for a
filter that would silently keep nothing. A model built on it declares its `HookPoint`s, sets
`self.cfg` (with the `use_*` flags) and calls `self.setup()`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

from torch import Tensor
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint
from transformer_lens.utilities.slice import Slice

from gated_interp import hooks
from gated_interp._user_warnings import warn_at_user_line
from gated_interp.cache import GatedActivationCache
from gated_interp.config import UNGROUP_UNSUPPORTED


class _HookNames(dict):
    """`hook_dict` / `mod_dict` that also answer the other spellings of a hook name
    (`get_act_name("gate", 0)`'s `blocks.0.hook_gate`, TL 2.x's `blocks.0.hook_q_input`);
    iteration still yields each hook once, under its real name."""

    def __missing__(self, key: Any) -> Any:
        real = hooks.resolve(key) if isinstance(key, str) else key
        if real != key and dict.__contains__(self, real):
            return dict.__getitem__(self, real)
        raise KeyError(key)

    def __contains__(self, key: Any) -> bool:
        if dict.__contains__(self, key):
            return True
        return isinstance(key, str) and dict.__contains__(self, hooks.resolve(key))

    def get(self, key: Any, default: Any = None) -> Any:
        return self[key] if key in self else default


class HookedRoot(HookedRootModule):
    """`HookedRootModule` whose hook names, switches and caches follow `gated_interp.hooks`."""

    def __init__(self) -> None:
        super().__init__()
        self._hook_lock = threading.RLock()  # see "thread safety" below

    # ---- thread safety -------------------------------------------------------------------
    # Hooks live on the model, so two threads running one model at once would see each other's
    # hooks and caches. One re-entrant lock per model is held for the whole hook lifetime:
    # `hooks()` (hence `run_with_hooks` and `run_with_cache`) from adding the hooks to removing
    # them, and every call `model(...)`. Runs on one model from several threads are therefore
    # safe and take turns; for parallel runs use one model per thread. Hooks added with
    # `add_hook` outside these (permanent hooks) are shared by every caller, as in TransformerLens.
    @contextmanager
    def hooks(self, *args: Any, **kwargs: Any) -> Iterator[HookedRoot]:
        """As `HookedRootModule.hooks`, holding the model's lock until the hooks are removed."""
        with self._hook_lock, super().hooks(*args, **kwargs) as model:
            yield model

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._hook_lock:
            return super().__call__(*args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:  # a lock cannot be copied or pickled: a copy gets its own
        state = dict(super().__getstate__())
        state.pop("_hook_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._hook_lock = threading.RLock()

    def setup(self) -> None:
        super().setup()
        self.mod_dict = _HookNames(self.mod_dict)
        self.hook_dict = _HookNames(self.hook_dict)

    # ---- TransformerLens' switches: each turns on the hooks of `gated_interp.hooks` with that switch
    def set_use_attn_result(self, use_attn_result: bool) -> None:
        """Compute and hook each head's output, `blocks.{l}.attn.hook_result [batch, pos, head, d_model]`."""
        self.cfg.use_attn_result = use_attn_result

    def set_use_split_qkv_input(self, use_split_qkv_input: bool) -> None:
        """Give each head its own copy of the block input, hooked before ln1:
        `blocks.{l}.attn.hook_q_input [batch, pos, head, d_model]` (the gate reads it too),
        `hook_k_input`/`hook_v_input [batch, pos, kv_head, d_model]`. ln1 then normalises each
        copy; its own hooks only observe the unforked stream (editing them raises)."""
        if use_split_qkv_input and self.cfg.use_attn_in:
            raise ValueError("use_split_qkv_input and use_attn_in cannot both be on: call set_use_attn_in(False) first")
        self.cfg.use_split_qkv_input = use_split_qkv_input

    def set_use_attn_in(self, use_attn_in: bool) -> None:
        """One per-head copy of the block input for q, k, v and the gate, hooked before ln1:
        `blocks.{l}.attn.hook_attn_in [batch, pos, head, d_model]`."""
        if use_attn_in and self.cfg.use_split_qkv_input:
            raise ValueError(
                "use_attn_in and use_split_qkv_input cannot both be on: call set_use_split_qkv_input(False) first"
            )
        self.cfg.use_attn_in = use_attn_in

    def set_use_hook_mlp_in(self, use_hook_mlp_in: bool) -> None:
        """Hook the MLP's input before ln2: `blocks.{l}.hook_mlp_in [batch, pos, d_model]`."""
        self.cfg.use_hook_mlp_in = use_hook_mlp_in

    def set_use_hook_tokens(self, use_hook_tokens: bool) -> None:
        """Hook the input token ids: `hook_tokens [batch, pos]`."""
        self.cfg.use_hook_tokens = use_hook_tokens

    def set_ungroup_grouped_query_attention(self, ungroup_grouped_query_attention: bool) -> None:
        if ungroup_grouped_query_attention:
            raise ValueError(UNGROUP_UNSUPPORTED)
        self.cfg.ungroup_grouped_query_attention = False

    # ---- hook names: every spelling in `gated_interp.hooks` resolves ---------------------------
    def _switched_on(self, name: str) -> bool:
        found = hooks.lookup(name)
        return found is None or found[0].switch is None or bool(getattr(self.cfg, found[0].switch))

    def _check_switch(self, name: str) -> None:
        if not self._switched_on(name):
            found = hooks.lookup(name)
            raise ValueError(
                f"{name} only fires after model.set_{found[0].switch}(True); a hook added now would never run"
            )

    def _check_split_ln1(self, name: str, hook: Callable) -> None:
        """With split inputs, ln1 normalises each head's copy itself; its hooks only observe the
        unforked stream, so an edit there would silently do nothing: refuse it."""
        if not (self.cfg.use_split_qkv_input or self.cfg.use_attn_in) or getattr(hook, "_observes_only", False):
            return
        found = hooks.lookup(name)
        if found is not None and found[0].where == "ln1":
            raise ValueError(
                f"{name} cannot be edited while use_split_qkv_input / use_attn_in is on: ln1 then normalises "
                "each head's copy of the block input, and its own hooks only observe the unforked stream. "
                "Edit blocks.{l}.attn.hook_q_input / hook_k_input / hook_v_input (or hook_attn_in) instead, "
                "or switch the split inputs off"
            )

    def _enable_hook_with_name(self, name: str, hook: Callable, dir: Literal["fwd", "bwd"]) -> None:
        self._check_switch(name)
        self._check_split_ln1(name, hook)
        if name not in self.hook_dict:  # mod_dict also holds modules that are no hooks
            raise KeyError(_unknown_hook_message(self, name))
        super()._enable_hook_with_name(hooks.resolve(name), hook, dir)

    def _enable_hooks_for_points(self, hook_points: Any, enabled: Callable, hook: Callable, dir: Any) -> None:
        # `run_with_hooks` / `hooks()` with a name filter: warn when it matches no hook that fires.
        hook_points = list(hook_points)
        self._check_hook_filter(enabled, [name for name, _ in hook_points])
        super()._enable_hooks_for_points(hook_points, enabled, hook, dir)

    def add_hook(self, name: str | Callable[[str], bool], hook: Callable, *args: Any, **kwargs: Any) -> None:
        """`HookedRootModule.add_hook`; a name may be any spelling `gated_interp.hooks` resolves.
        A named hook that could never run (switch off) or would be ignored (ln1 under split inputs)
        raises; a filter simply passes over the hooks whose switch is off."""
        if isinstance(name, str):
            self._check_switch(name)
            self._check_split_ln1(name, hook)
            if name not in self.hook_dict:  # mod_dict also holds modules that are no hooks
                raise KeyError(_unknown_hook_message(self, name))
            name = hooks.resolve(name)
        else:
            name_filter = name
            self._check_hook_filter(name_filter, list(self.hook_dict))

            def name(hook_name: str) -> bool:
                return self._switched_on(hook_name) and name_filter(hook_name)

        super().add_hook(name, hook, *args, **kwargs)

    def _caching_names_filter(self, names_filter: Any) -> Any:
        """Names resolved to real hook names; a callable that names hooks by alias warns.

        A string or list names hooks, so each name must be one: a misspelled name raises a
        `KeyError` naming it, even among valid ones (TransformerLens would drop it and cache the
        rest, so a missing activation would surface far from the typo)."""
        names_filter = _resolve_names_filter(names_filter)
        if callable(names_filter):
            self._warn_filter_takes_aliases(names_filter, "names_filter")
        elif isinstance(names_filter, (str, list)):
            names = [names_filter] if isinstance(names_filter, str) else names_filter
            unknown = [name for name in names if name not in self.hook_dict]
            if unknown:
                raise KeyError(_unknown_hook_message(self, unknown[0]))
        return names_filter

    def add_caching_hooks(
        self,
        names_filter: Any = None,
        incl_bwd: bool = False,
        device: Any = None,
        remove_batch_dim: bool = False,
        cache: dict | None = None,
    ) -> dict:
        """`HookedRootModule.add_caching_hooks` (TransformerLens' `cache_all` path), with names as
        in `run_with_cache`: any spelling `gated_interp.hooks` resolves. TransformerLens would
        compare a list with the real names only and keep nothing for `get_act_name("gate", 0)`."""
        names_filter = self._caching_names_filter(names_filter)
        return super().add_caching_hooks(names_filter, incl_bwd, device, remove_batch_dim, cache)

    def get_caching_hooks(
        self,
        names_filter: Any = None,
        incl_bwd: bool = False,
        device: Any = None,
        remove_batch_dim: bool = False,
        cache: dict | None = None,
        pos_slice: Any = None,
    ) -> tuple[dict, list, list]:
        """TransformerLens' caching hooks, with hook names resolved through `gated_interp.hooks`
        and `pos_slice` applied along each hook's own position axis (from the hook table):
        TransformerLens only knows that axis for hook_q/k/v/z/result, and would slice the head
        axis of hook_gate, hook_q_normed, ..."""
        names_filter = self._caching_names_filter(names_filter)
        cache = {} if cache is None else cache
        pos_slice = Slice.unwrap(pos_slice)
        _, fwd, bwd = super().get_caching_hooks(names_filter, incl_bwd, device, remove_batch_dim, cache, None)
        # Hooks whose switch is off never fire: leave them out rather than refuse them.
        fwd = [(name, fn) for name, fn in fwd if self._switched_on(name)]
        bwd = [(name, fn) for name, fn in bwd if self._switched_on(name)]
        if pos_slice.mode == "identity":
            return cache, [(name, _observer(fn)) for name, fn in fwd], [(name, _observer(fn)) for name, fn in bwd]

        def sliced(save: Callable, backward: bool) -> Callable:
            def hook_fn(tensor: Tensor, hook: HookPoint) -> None:
                save(tensor, hook)
                key = hook.name + ("_grad" if backward else "")
                found = hooks.lookup(hook.name)
                dim = found[0].pos_dim if found is not None else -2
                if cache[key].dim() >= -dim:
                    cache[key] = pos_slice.apply(cache[key], dim=dim)

            return hook_fn

        fwd = [(name, _observer(sliced(fn, False))) for name, fn in fwd]
        bwd = [(name, _observer(sliced(fn, True))) for name, fn in bwd]
        return cache, fwd, bwd

    # ---- caching -------------------------------------------------------------------------
    def run_with_cache(
        self, *model_args: Any, return_cache_object: bool = True, remove_batch_dim: bool = False, **kwargs: Any
    ) -> tuple[Any, GatedActivationCache | dict[str, Tensor]]:
        """As `HookedTransformer.run_with_cache`; the cache also answers `cache["gate", l]`, and
        `names_filter` and `pos_slice` know every hook of `gated_interp.hooks` (see
        `get_caching_hooks`)."""
        out, cache_dict = super().run_with_cache(*model_args, remove_batch_dim=remove_batch_dim, **kwargs)
        if not cache_dict:
            self._warn_empty_cache(kwargs.get("names_filter"))
        if return_cache_object:
            return out, GatedActivationCache(cache_dict, self, has_batch_dim=not remove_batch_dim)
        return out, cache_dict

    def _check_hook_filter(self, name_filter: Callable[[str], bool], names: list[str]) -> None:
        """Warn about a hook-adding filter (`run_with_hooks`, `hooks()`, `add_hook`) that names hooks
        by alias, or else matches none of `names` whose hook fires."""
        what = "a hook's name filter"
        if not self._warn_filter_takes_aliases(name_filter, what) and not any(
            self._switched_on(name) and name_filter(name) for name in names
        ):
            self._warn_filter_matches_nothing(name_filter, what)

    def _warn_filter_takes_aliases(self, name_filter: Callable[[str], bool], what: str) -> bool:
        """Warn when a selective callable filter accepts another spelling of a hook but not its real
        name: `lambda n: n in {get_act_name("gate", 0), ...}` compares with `blocks.0.hook_gate`,
        while callables see the real `blocks.0.attn.hook_gate`, so that hook is silently left out
        even when the filter keeps others. A filter that also accepts a name no model has (a
        negative filter such as `lambda n: "attn" not in n`) is not taken as naming hooks."""
        if name_filter(_NO_SUCH_HOOK):
            return False
        missed = [
            f"{alias.format(layer=layer)} (the hook is {name})"
            for name in self.hook_dict
            if self._switched_on(name) and not name_filter(name) and (found := hooks.lookup(name)) is not None
            for spec, layer in [found]
            for alias in spec.aliases
            if name_filter(alias.format(layer=layer))
        ]
        if missed:
            warn_at_user_line(
                f"{what} accepts other spellings of {len(missed)} hook(s) but not their real names, so they are "
                f"left out: e.g. {missed[0]}; a callable filter sees the real names, so compare with "
                "gated_interp.hooks.resolve(name) or pass the names themselves"
            )
        return bool(missed)

    def _warn_filter_matches_nothing(self, name_filter: Callable[[str], bool], what: str) -> None:
        """A callable filter that matched no hook that fires because the hooks it names have their
        `use_*` switch off."""
        off = [name for name in self.hook_dict if not self._switched_on(name) and name_filter(name)]
        if off:
            switch = hooks.lookup(off[0])[0].switch
            warn_at_user_line(
                f"{what} matches no hook that fires: {off[0]} (and the like) only fire after model.set_{switch}(True)"
            )

    def _warn_empty_cache(self, names_filter: Any) -> None:
        """An empty cache because of a habit that works in TransformerLens' own vocabulary: a
        filter that compares with an alias (`get_act_name("gate", 0)` is `blocks.0.hook_gate`; the
        hook sits at `blocks.0.attn.hook_gate`), or names whose `use_*` switch is off."""
        if names_filter is None:
            return
        real = list(self.hook_dict)
        if callable(names_filter):  # one that takes aliases was warned about by get_caching_hooks
            self._warn_filter_matches_nothing(names_filter, "names_filter")
            return
        # Unknown names were refused by _caching_names_filter: what is left is switched off.
        names = [names_filter] if isinstance(names_filter, str) else list(names_filter)
        off = [name for name in map(hooks.resolve, names) if name in real and not self._switched_on(name)]
        if off:
            switch = hooks.lookup(off[0])[0].switch
            warn_at_user_line(f"names_filter kept no hook: {off} only fire after model.set_{switch}(True)")


def _observer(fn: Callable) -> Callable:
    """A caching hook, marked as one that reads its activation and returns nothing."""

    def hook_fn(tensor: Tensor, hook: HookPoint) -> None:
        fn(tensor, hook=hook)

    hook_fn._observes_only = True
    return hook_fn


# A hook name no model has: a filter that accepts it accepts by exclusion, not by naming hooks.
_NO_SUCH_HOOK = "blocks.0.hook_no_such_hook_in_any_model"


def _resolve_names_filter(names_filter: Any) -> Any:
    """A `names_filter` whose names (a string or list) may be any spelling `gated_interp.hooks` resolves."""
    if isinstance(names_filter, str):
        return hooks.resolve(names_filter)
    if isinstance(names_filter, (list, tuple, set)):
        return [hooks.resolve(name) for name in names_filter]
    return names_filter


def _unknown_hook_message(model: HookedRoot, name: str) -> str:
    note = hooks.tl2_name_note(name)
    if note is not None:
        return note
    found = hooks.lookup(name)
    if found is not None and found[0].absent_because(model.cfg, found[1]):
        return f"{name!r}: this model has no such hook ({found[0].absent_because(model.cfg, found[1])})"
    return (
        f"{name!r} is not a hook of this model: a hook name is a full name such as get_act_name('gate', 0) "
        "(see gated_interp.hooks.HOOKS or model.hook_dict)"
    )
