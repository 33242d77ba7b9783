"""`HookedGatedQwen3`: Qwen3 with optional attention-output gating, on TransformerLens' hooks.

It behaves like a `transformer_lens.HookedTransformer`: the same hook names, cache keys, weight
shapes and call signatures (`forward`, `run_with_cache`, `run_with_hooks`, `to_tokens`, `generate`,
...), so that `ActivationCache` methods and `transformer_lens.patching` work on it unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal, NamedTuple, Optional, Union

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint
from transformer_lens.utilities import composition_scores, get_attention_mask, lm_cross_entropy_loss
from transformer_lens.utilities.slice import Slice

from gated_interp import hooks, weight_processing
from gated_interp.cache import GatedActivationCache
from gated_interp.components import Embed, KVCacheEntry, RMSNorm, RotaryEmbedding, TransformerBlock, Unembed
from gated_interp.config import N_DEVICES_UNSUPPORTED, UNGROUP_UNSUPPORTED, GatedQwen3Config

ModelInput = Union[str, Sequence[str], Int[Tensor, "batch pos"], Int[Tensor, "pos"]]
# `forward` also takes the residual stream entering block n, with `start_at_layer=n`.
ForwardInput = Union[ModelInput, Float[Tensor, "batch pos d_model"]]
ReturnType = Optional[Literal["logits", "loss", "both"]]
PaddingSide = Literal["left", "right"]


class Output(NamedTuple):
    """`forward(..., return_type="both")`: TransformerLens 2.x's `Output(logits, loss)`
    (TransformerLens 4.x no longer ships one; unpacks as a tuple either way)."""

    logits: Float[Tensor, "batch pos d_vocab"]
    loss: Float[Tensor, ""] | Float[Tensor, "batch pos-1"]


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


class HookedGatedQwen3(HookedRootModule):
    def __init__(self, cfg: GatedQwen3Config, tokenizer: Any = None):
        super().__init__()
        self._hook_lock = threading.RLock()  # see "thread safety" below
        self.cfg = cfg
        # cfg.default_prepend_bos left None follows the tokenizer (see the `tokenizer` setter)
        self._explicit_prepend_bos = cfg.default_prepend_bos is not None
        self.tokenizer = tokenizer
        if cfg.n_devices != 1:
            raise ValueError(N_DEVICES_UNSUPPORTED)
        self.embed = Embed(cfg)
        self.hook_tokens = HookPoint()  # [batch, pos], with cfg.use_hook_tokens
        self.hook_embed = HookPoint()  # [batch, pos, d_model]
        self.rotary = RotaryEmbedding(cfg.d_head, cfg.rope_theta, cfg.rope_scaling)
        self.blocks = nn.ModuleList(TransformerBlock(cfg, layer) for layer in range(cfg.n_layers))
        self.ln_final = RMSNorm(cfg.d_model, cfg.rms_norm_eps, cfg.dtype)
        self.unembed = Unembed(cfg, self.embed)
        self.setup()
        self.to(cfg.device)

    # ---- thread safety -------------------------------------------------------------------
    # Hooks live on the model, so two threads running one model at once would see each other's
    # hooks and caches. One re-entrant lock per model is held for the whole hook lifetime:
    # `hooks()` (hence `run_with_hooks` and `run_with_cache`) from adding the hooks to removing
    # them, and every call `model(...)`. Runs on one model from several threads are therefore
    # safe and take turns; for parallel runs use one model per thread. Hooks added with
    # `add_hook` outside these (permanent hooks) are shared by every caller, as in TransformerLens.
    @contextmanager
    def hooks(self, *args: Any, **kwargs: Any) -> Iterator[HookedGatedQwen3]:
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

    # ---- set-up --------------------------------------------------------------------------
    def init_weights(self, seed: int = 0, std: float = 0.02) -> HookedGatedQwen3:
        """Random initialisation for training from scratch: normal(0, std) matrices, output
        projections scaled by 1/sqrt(2 n_layers) (GPT-2 style, for a stable residual stream at
        init), unit norm weights, zero biases."""
        for name, param in self.named_parameters():
            # One generator per parameter, seeded by its name: the weights that a baseline and a
            # gated variant share start identical, whatever extra (gate) parameters exist.
            generator = torch.Generator().manual_seed(_name_seed(seed, _SEED_NAMES.get(name, name)))
            if name.endswith(".w"):
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
        if name not in self.mod_dict:
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
            if name not in self.mod_dict:
                raise KeyError(_unknown_hook_message(self, name))
            name = hooks.resolve(name)
        else:
            name_filter = name
            self._check_hook_filter(name_filter, list(self.hook_dict))

            def name(hook_name: str) -> bool:
                return self._switched_on(hook_name) and name_filter(hook_name)

        super().add_hook(name, hook, *args, **kwargs)

    def _caching_names_filter(self, names_filter: Any) -> Any:
        """Names resolved to real hook names; a callable that names hooks by alias warns."""
        names_filter = _resolve_names_filter(names_filter)
        if callable(names_filter):
            self._warn_filter_takes_aliases(names_filter, "names_filter")
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
        if isinstance(names_filter, (str, list)):
            unknown = [
                n
                for n in ([names_filter] if isinstance(names_filter, str) else names_filter)
                if n not in self.hook_dict
            ]
            if unknown:
                raise KeyError(_unknown_hook_message(self, unknown[0]))
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

    # ---- tokenisation --------------------------------------------------------------------
    def _require_tokenizer(self) -> Any:
        if self.tokenizer is None:
            raise ValueError(
                "this model has no tokenizer: pass token ids, or load a checkpoint folder that has "
                "tokenizer files (tokenizer.json / tokenizer_config.json), or call model.set_tokenizer(tokenizer)"
            )
        return self.tokenizer

    @property
    def tokenizer(self) -> Any:
        return self.__dict__.get("_tokenizer")

    @tokenizer.setter
    def tokenizer(self, tokenizer: Any) -> None:
        # Unless the config fixed it, prepend a BOS exactly when the tokenizer has one.
        self.__dict__["_tokenizer"] = tokenizer
        if not self.__dict__.get("_explicit_prepend_bos", False):
            self.cfg.default_prepend_bos = tokenizer is not None and tokenizer.bos_token_id is not None

    def set_tokenizer(self, tokenizer: Any, default_padding_side: PaddingSide = "right") -> None:
        """Attach a Hugging Face tokenizer, as TransformerLens' `set_tokenizer`: batches are padded
        on `default_padding_side` unless a call says otherwise; `cfg.default_prepend_bos` (unless
        the config set it) becomes whether the tokenizer has a BOS token."""
        if default_padding_side not in ("left", "right"):
            raise ValueError(f"default_padding_side must be 'left' or 'right', got {default_padding_side!r}")
        self.tokenizer = tokenizer
        self.cfg.default_padding_side = default_padding_side
        tokenizer.padding_side = default_padding_side

    @property
    def default_prepend_bos(self) -> bool:
        return bool(self.cfg.default_prepend_bos)

    def _padding_side(self, padding_side: PaddingSide | None) -> PaddingSide:
        side = self.cfg.default_padding_side if padding_side is None else padding_side
        if side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
        return side

    def _tokenize(
        self,
        input: str | Sequence[str],
        prepend_bos: bool | None = None,
        padding_side: PaddingSide | None = None,
        truncate: bool = True,
        move_to_device: bool = True,
    ) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
        """Tokens and attention mask (1 = real token); a batch is padded with the tokenizer's pad
        token on `padding_side` (default `cfg.default_padding_side`)."""
        tokenizer = self._require_tokenizer()
        texts = [input] if isinstance(input, str) else list(input)
        if not texts or any(not isinstance(t, str) for t in texts):
            raise ValueError("expected a string or a non-empty list of strings")
        side = self._padding_side(padding_side)
        prepend_bos = self.default_prepend_bos if prepend_bos is None else prepend_bos
        if prepend_bos and tokenizer.bos_token_id is None:
            raise ValueError("prepend_bos=True but the tokenizer has no BOS token")
        # An empty prompt is an error even when a BOS token would make it one token long: it is
        # almost always a bug upstream (an empty line, a failed read). `generate("")` is the way
        # to sample from the BOS alone.
        empty = [i for i, text in enumerate(texts) if text == ""]
        if empty:
            raise ValueError(
                f"prompt(s) at index {empty} are empty: give at least one character of text (TransformerLens "
                "would return the BOS token alone; for that, pass torch.tensor([[model.tokenizer.bos_token_id]]), "
                'or call generate("") to sample from it)'
            )
        ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        ids = [([tokenizer.bos_token_id] if prepend_bos else []) + seq for seq in ids]
        too_long = [i for i, seq in enumerate(ids) if len(seq) > self.cfg.n_ctx]
        if too_long and truncate:
            _warn_at_user_line(
                f"prompt(s) at index {too_long} are longer than the context (n_ctx={self.cfg.n_ctx} tokens) "
                "and were cut to their first n_ctx tokens, as TransformerLens does; "
                "pass truncate=False to keep them whole"
            )
            ids = [seq[: self.cfg.n_ctx] for seq in ids]
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        length = max(len(seq) for seq in ids)
        tokens = torch.full((len(ids), length), pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), length), dtype=torch.long)
        for i, seq in enumerate(ids):
            where = slice(0, len(seq)) if side == "right" else slice(length - len(seq), length)
            tokens[i, where] = torch.tensor(seq, dtype=torch.long)
            mask[i, where] = 1
        if move_to_device:
            tokens, mask = tokens.to(self.cfg.device), mask.to(self.cfg.device)
        return tokens, mask

    def to_tokens(
        self,
        input: str | Sequence[str],
        prepend_bos: bool | None = None,
        padding_side: PaddingSide | None = None,
        move_to_device: bool = True,
        truncate: bool = True,
        return_attention_mask: bool = False,
    ) -> Int[Tensor, "batch pos"] | tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
        """Tokens `[batch, pos]`, padded with the pad token on `padding_side` (default
        `cfg.default_padding_side`, "right") when prompts differ in length; prompts longer than
        `cfg.n_ctx` are cut with a warning unless `truncate=False`. With
        `return_attention_mask=True`, also the mask (1 = real token) to pass to `forward`."""
        tokens, mask = self._tokenize(input, prepend_bos, padding_side, truncate, move_to_device)
        return (tokens, mask) if return_attention_mask else tokens

    def to_str_tokens(
        self,
        input: str | Sequence[str] | Tensor | Sequence[int],
        prepend_bos: bool | None = None,
        padding_side: PaddingSide | None = None,
    ) -> list[str] | list[list[str]]:
        """Each token as a string: a string or a token sequence (`[pos]`, `[1, pos]` or a 0-d tensor)
        gives `list[str]`; a list of strings gives one list per string, as in TransformerLens."""
        tokenizer = self._require_tokenizer()
        if isinstance(input, (list, tuple)) and input and all(isinstance(x, str) for x in input):
            return [self.to_str_tokens(text, prepend_bos, padding_side) for text in input]
        if isinstance(input, str):
            tokens = self.to_tokens(input, prepend_bos, padding_side)[0]
        else:
            tokens = torch.as_tensor(input)
            if tokens.ndim == 0:
                tokens = tokens[None]
            if tokens.ndim == 2:
                if tokens.shape[0] != 1:
                    raise ValueError(
                        f"to_str_tokens takes one sequence, got a batch of {tokens.shape[0]}: "
                        "call it per row, e.g. [model.to_str_tokens(row) for row in tokens]"
                    )
                tokens = tokens[0]
            if tokens.ndim != 1:
                raise ValueError(
                    f"to_str_tokens takes a token sequence [pos] or [1, pos], got shape {tuple(tokens.shape)}"
                )
        return [tokenizer.decode([int(t)]) for t in tokens]

    def to_string(self, tokens: Int[Tensor, "pos"] | Int[Tensor, "batch pos"] | Sequence[int]) -> str | list[str]:
        tokenizer = self._require_tokenizer()
        tokens = torch.as_tensor(tokens)
        if tokens.ndim == 2:
            return [tokenizer.decode(row.tolist()) for row in tokens]
        return tokenizer.decode(tokens.tolist())

    def to_single_token(self, string: str) -> int:
        tokens = self.to_tokens(string, prepend_bos=False)[0]
        if tokens.numel() != 1:
            raise ValueError(f"{string!r} is {tokens.numel()} tokens, not one")
        return int(tokens.item())

    def to_single_str_token(self, int_token: int) -> str:
        """The string of one token id."""
        if not isinstance(int_token, int) or isinstance(int_token, bool):
            raise TypeError(f"to_single_str_token takes one int token id, got {type(int_token).__name__}")
        return self.to_str_tokens(torch.tensor([int_token]))[0]

    def get_token_position(
        self,
        single_token: str | int,
        input: str | Int[Tensor, "pos"] | Int[Tensor, "1 pos"],
        mode: Literal["first", "last"] = "first",
        prepend_bos: bool | None = None,
        padding_side: PaddingSide | None = None,
    ) -> int:
        """Position of `single_token` (a token id or a one-token string) in `input`; raises if absent."""
        tokens = self.to_tokens(input, prepend_bos, padding_side) if isinstance(input, str) else torch.as_tensor(input)
        if tokens.ndim == 2:
            if tokens.shape[0] != 1:
                raise ValueError(f"tokens of rank two must have shape [1, pos], not {tuple(tokens.shape)}")
            tokens = tokens[0]
        if isinstance(single_token, str):
            single_token = self.to_single_token(single_token)
        elif isinstance(single_token, Tensor):
            single_token = int(single_token.item())
        indices = torch.nonzero(tokens == single_token)[:, 0]
        if len(indices) == 0:
            raise ValueError(f"token {single_token} does not occur in the prompt")
        if mode == "first":
            return int(indices[0])
        if mode == "last":
            return int(indices[-1])
        raise ValueError(f"mode must be 'first' or 'last', not {mode!r}")

    # ---- forward -------------------------------------------------------------------------
    def _as_tokens(
        self,
        input: ModelInput,
        attention_mask: Tensor | None,
        prepend_bos: bool | None,
        padding_side: PaddingSide | None = None,
    ) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"] | None]:
        """Tokens and the mask to run them with (None: no padding to hide).

        Strings: the mask from tokenizing them. Token tensors without a mask: left-padded ones
        (`padding_side="left"`, or `cfg.default_padding_side`) get the mask TransformerLens
        derives from the leading pad tokens; right padding needs none for the real positions."""
        if isinstance(input, str) or (isinstance(input, (list, tuple)) and input and isinstance(input[0], str)):
            tokens, string_mask = self._tokenize(input, prepend_bos, padding_side)
            if attention_mask is None and not bool(string_mask.all()):
                attention_mask = string_mask
            return tokens, attention_mask
        if isinstance(input, Tensor) and input.is_floating_point():
            raise ValueError(
                f"got a float tensor {tuple(input.shape)}, but token ids are integers. To run from embeddings, pass "
                "them as the residual stream entering block 0: model(embeddings, start_at_layer=0) "
                "(tokens=... for a loss)"
            )
        tokens = torch.as_tensor(input, device=self.cfg.device)
        if tokens.ndim == 1:
            tokens = tokens[None]
        if tokens.ndim != 2 or tokens.is_floating_point():
            raise ValueError(f"tokens must be an integer tensor [batch, pos], got {tuple(tokens.shape)} {tokens.dtype}")
        if tokens.shape[1] == 0:
            raise ValueError("empty input: give at least one token")
        bad = (tokens < 0) | (tokens >= self.cfg.d_vocab)
        if bool(bad.any()):
            raise ValueError(
                f"token id {int(tokens[bad][0])} is outside the vocabulary (0..{self.cfg.d_vocab - 1}); "
                "were these tokens made with another model's tokenizer?"
            )
        if attention_mask is not None:
            if attention_mask.shape != tokens.shape:
                raise ValueError(
                    f"attention_mask shape {tuple(attention_mask.shape)} does not match tokens {tuple(tokens.shape)}"
                )
            return tokens, attention_mask.to(tokens.device)
        pad_id = getattr(self.tokenizer, "pad_token_id", None)
        if self._padding_side(padding_side) == "left" and pad_id is not None and bool((tokens[:, 0] == pad_id).any()):
            prepend = self.default_prepend_bos if prepend_bos is None else prepend_bos
            derived = get_attention_mask(self.tokenizer, tokens, prepend, padding_side="left")
            return tokens, derived.to(tokens.device)
        return tokens, None

    def _warn_if_right_padded(self, tokens: Tensor, attention_mask: Tensor | None) -> None:
        """A loss over right-padded tokens without a mask counts the padding, as in TransformerLens:
        say so, since the number is then not the text's loss."""
        pad_id = getattr(self.tokenizer, "pad_token_id", None)
        if attention_mask is not None or pad_id is None:
            return
        if pad_id in (getattr(self.tokenizer, "bos_token_id", None), getattr(self.tokenizer, "eos_token_id", None)):
            return  # a pad that is also BOS/EOS cannot be told from a real one
        rows = torch.nonzero(tokens[:, -1] == pad_id)[:, 0].tolist()
        if rows:
            _warn_at_user_line(
                f"row(s) {rows} end in the pad token (id {pad_id}) and no attention_mask was given: the loss counts "
                "those padded positions, as TransformerLens does. To leave them out, pass "
                "attention_mask=model.to_tokens(prompts, return_attention_mask=True)[1] (or the strings themselves)"
            )

    @staticmethod
    def _attention_mask_4d(
        attention_mask: Int[Tensor, "batch k_pos"], n_queries: int
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
        attention_mask: Int[Tensor, "batch pos"] | None = None,
        stop_at_layer: int | None = None,
        past_kv_cache: list[KVCacheEntry] | None = None,
        past_attention_mask: Int[Tensor, "batch past_pos"] | None = None,
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
        """
        if return_type not in ("logits", "loss", "both", None):
            raise ValueError(f"return_type must be 'logits', 'loss', 'both' or None, got {return_type!r}")
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
            n_past = past_kv_cache[0].keys.shape[1]
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
        first = start_at_layer or 0
        for layer, block in zip(range(first, self.cfg.n_layers), self.blocks[first:stop_at_layer]):
            past = past_kv_cache[layer] if past_kv_cache is not None else None
            residual = block(residual, cos, sin, mask_4d, past)
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
        self, input: Tensor, attention_mask: Tensor | None, past_kv_cache: list[KVCacheEntry] | None
    ) -> Float[Tensor, "batch pos d_model"]:
        if not isinstance(input, Tensor) or input.ndim != 3 or input.shape[-1] != self.cfg.d_model:
            shape = tuple(input.shape) if isinstance(input, Tensor) else type(input).__name__
            raise ValueError(
                f"with start_at_layer, input must be a residual stream [batch, pos, {self.cfg.d_model}], got {shape}"
            )
        if past_kv_cache is not None:
            raise ValueError("start_at_layer cannot be combined with past_kv_cache")
        if attention_mask is not None and attention_mask.shape != input.shape[:2]:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} does not match the residual's "
                f"[batch, pos] {tuple(input.shape[:2])}"
            )
        return input.to(self.cfg.device)

    @staticmethod
    def loss_fn(
        logits: Float[Tensor, "batch pos d_vocab"],
        tokens: Int[Tensor, "batch pos"],
        attention_mask: Int[Tensor, "batch pos"] | None = None,
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
            _warn_at_user_line(
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
            _warn_at_user_line(
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
        names = [names_filter] if isinstance(names_filter, str) else list(names_filter)
        resolved = [hooks.resolve(name) for name in names]
        off = [name for name in resolved if name in real and not self._switched_on(name)]
        unknown = [name for name, full in zip(names, resolved) if full not in real]
        if unknown:
            _warn_at_user_line(
                f"names_filter kept no hook: {unknown} are not hook names of this model (a list or string "
                "names_filter takes full names, e.g. get_act_name('gate', 0); see gated_interp.hooks.HOOKS)"
            )
        elif off:
            switch = hooks.lookup(off[0])[0].switch
            _warn_at_user_line(f"names_filter kept no hook: {off} only fire after model.set_{switch}(True)")

    # ---- generation ----------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        input: ModelInput = "",
        max_new_tokens: int = 10,
        stop_at_eos: bool = True,
        eos_token_id: int | Sequence[int] | None = None,
        do_sample: bool = True,
        top_k: int | None = None,
        top_p: float | None = None,
        temperature: float = 1.0,
        freq_penalty: float = 0.0,
        use_past_kv_cache: bool = True,
        prepend_bos: bool | None = None,
        padding_side: PaddingSide | None = None,
        return_type: Literal["input", "str", "tokens"] = "input",
        seed: int | None = None,
        verbose: bool = True,
    ) -> str | list[str] | Int[Tensor, "batch total_pos"]:
        """Greedy (`do_sample=False` or `temperature=0`) or sampled continuation, with a KV cache.

        Returns strings when given strings (`return_type="input"`) or with `return_type="str"`
        (one `str` for a single sequence, as in TransformerLens), else tokens. `eos_token_id` may
        be a list: any of them ends a sequence. `freq_penalty` subtracts `freq_penalty * count`
        from the logit of each token already in the sequence (prompt included, padding not), when
        sampling. Batched prompts of different lengths are left-aligned with padding masked
        (whatever `padding_side`), so each continues its own text.
        """
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if return_type not in ("input", "str", "tokens"):
            raise ValueError(f"return_type must be 'input', 'str' or 'tokens', got {return_type!r}")
        if isinstance(input, Tensor) and input.is_floating_point():
            raise ValueError(
                "generate takes strings or token ids, not embeddings: for logits from embeddings use "
                "model(embeddings, start_at_layer=0); to generate, pass the token ids"
            )
        greedy = not do_sample or temperature == 0.0
        if freq_penalty and greedy:
            raise ValueError(
                "freq_penalty only applies when sampling (as in TransformerLens, greedy decoding ignores it): "
                "use do_sample=True with temperature > 0, or freq_penalty=0"
            )
        given_strings = isinstance(input, str) or (
            isinstance(input, (list, tuple)) and input and isinstance(input[0], str)
        )
        if isinstance(input, str) and input == "" and self.default_prepend_bos:
            tokens = torch.tensor([[self.tokenizer.bos_token_id]], device=self.cfg.device)
            mask = torch.ones_like(tokens)
        else:
            tokens, mask = self._as_tokens(input, None, prepend_bos, padding_side)
            mask = torch.ones_like(tokens) if mask is None else mask
        # Left-align padding so that every sequence's next token goes at the same column.
        tokens, mask = _left_pad(tokens, mask)
        if eos_token_id is None and self.tokenizer is not None:
            eos_token_id = self.tokenizer.eos_token_id
        eos_ids = [] if eos_token_id is None else [int(e) for e in torch.as_tensor(eos_token_id).flatten().tolist()]
        if stop_at_eos and eos_token_id is not None and not eos_ids:
            raise ValueError("eos_token_id is an empty list: give at least one id, or stop_at_eos=False")
        eos = torch.tensor(eos_ids, dtype=torch.long, device=tokens.device)
        generator = torch.Generator(device=self.cfg.device).manual_seed(seed) if seed is not None else None

        finished = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
        kv_cache: list[KVCacheEntry] | None = None
        next_input, next_mask = tokens, mask
        for _ in tqdm(range(max_new_tokens), disable=not verbose, desc="generating"):
            if use_past_kv_cache:
                if kv_cache is None:
                    kv_cache = self._empty_kv_cache(tokens.shape[0])
                    past_mask = mask[:, :0]
                else:
                    past_mask = mask[:, :-1]
                logits = self(
                    next_input, attention_mask=next_mask, past_kv_cache=kv_cache, past_attention_mask=past_mask
                )
            else:
                logits = self(tokens, attention_mask=mask)
            next_logits = logits[:, -1].float()
            if greedy:
                next_token = next_logits.argmax(-1)
            else:
                next_logits = next_logits / temperature
                if freq_penalty:
                    counts = torch.zeros_like(next_logits).scatter_add_(1, tokens, mask.to(next_logits.dtype))
                    next_logits = next_logits - freq_penalty * counts
                next_token = _sample(next_logits, top_k, top_p, generator)
            if eos_ids and stop_at_eos:
                next_token = torch.where(finished, torch.full_like(next_token, eos_ids[0]), next_token)
                finished |= torch.isin(next_token, eos)
            tokens = torch.cat([tokens, next_token[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones_like(next_token[:, None])], dim=1)
            next_input, next_mask = next_token[:, None], torch.ones_like(next_token[:, None])
            if stop_at_eos and eos_ids and bool(finished.all()):
                break

        if return_type == "tokens" or (return_type == "input" and not given_strings):
            return tokens
        # Special tokens (the BOS we prepended, an EOS that ended the text) are not part of the text.
        tokenizer = self._require_tokenizer()
        texts = [tokenizer.decode(row[m.bool()].tolist(), skip_special_tokens=True) for row, m in zip(tokens, mask)]
        return texts[0] if len(texts) == 1 else texts

    def _empty_kv_cache(self, batch: int) -> list[KVCacheEntry]:
        shape = (batch, 0, self.cfg.n_key_value_heads, self.cfg.d_head)
        return [
            KVCacheEntry(
                torch.empty(shape, dtype=self.cfg.dtype, device=self.cfg.device),
                torch.empty(shape, dtype=self.cfg.dtype, device=self.cfg.device),
            )
            for _ in range(self.cfg.n_layers)
        ]

    # ---- TransformerLens helpers ---------------------------------------------------------
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

    # ---- weight processing (TransformerLens' fold_ln, center_unembed, ...) --------------------
    def process_weights_(
        self,
        fold_ln: bool = True,
        center_writing_weights: bool = False,
        center_unembed: bool = False,
        fold_value_biases: bool = False,
        refactor_factored_attn_matrices: bool = False,
    ) -> HookedGatedQwen3:
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
            raise ValueError(
                "center_writing_weights cannot apply to an RMSNorm model: RMSNorm does not subtract the "
                "mean, so removing the mean from the weights that write to the residual stream changes "
                "what every norm outputs (TransformerLens skips it for RMSNorm models too). Leave it False."
            )
        if refactor_factored_attn_matrices:
            raise ValueError(
                "refactor_factored_attn_matrices cannot apply with rotary embeddings: the QK circuit depends "
                "on the query and key positions (and here on the q/k norms). Leave it False."
            )
        if fold_value_biases and self.cfg.is_gated:
            weight_processing.fold_value_biases(self.state_dict(), self.cfg)  # raises before any change
        if self.unembed.tied and weight_processing.needs_own_unembedding(self.state_dict(), fold_ln, center_unembed):
            self.unembed.untie()
            self.cfg.tie_word_embeddings = False
        steps = [
            (fold_ln, lambda state: weight_processing.fold_layer_norm_updates(state, self.cfg, in_place=True)),
            (center_unembed, lambda state: weight_processing.center_unembed_updates(state, in_place=True)),
            (fold_value_biases, lambda state: weight_processing.fold_value_biases_updates(state, self.cfg)),
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
    ) -> HookedGatedQwen3 | dict[str, Tensor]:
        """Fold the RMSNorm weights into the weights that read them. Without `state_dict`, folds
        this model in place (as `process_weights_(fold_ln=True)`) and returns it; with one (TL
        2.x's form), returns a folded copy of that state dict and leaves the model alone."""
        if fold_biases or center_weights:
            raise ValueError(
                "fold_biases/center_weights apply to LayerNorm only: RMSNorm has no bias and does not "
                "subtract the mean (TransformerLens folds RMSNorm with both off). Leave them False."
            )
        if state_dict is not None:
            return weight_processing.fold_layer_norm(state_dict, self.cfg)
        return self.process_weights_(fold_ln=True)

    def center_unembed(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """TL 2.x's state-dict form: a copy with `W_U`, `b_U` centred over the vocabulary."""
        return weight_processing.center_unembed(state_dict)

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

    # ---- stacked weights -----------------------------------------------------------------
    @property
    def W_E(self) -> Float[Tensor, "d_vocab d_model"]:
        return self.embed.W_E

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        return self.unembed.W_U

    @property
    def b_U(self) -> Float[Tensor, "d_vocab"]:
        return self.unembed.b_U

    def _stack_attn(self, name: str) -> Tensor:
        return torch.stack([getattr(block.attn, name) for block in self.blocks], dim=0)

    @property
    def W_Q(self) -> Float[Tensor, "layer head d_model d_head"]:
        return self._stack_attn("W_Q")

    @property
    def W_K(self) -> Float[Tensor, "layer head d_model d_head"]:
        return self._stack_attn("W_K")

    @property
    def W_V(self) -> Float[Tensor, "layer head d_model d_head"]:
        return self._stack_attn("W_V")

    @property
    def W_O(self) -> Float[Tensor, "layer head d_head d_model"]:
        return self._stack_attn("W_O")

    @property
    def W_G(self) -> Float[Tensor, "layer head d_model gate"]:
        if not self.cfg.is_gated:
            raise AttributeError("this model has no attention-output gate (cfg.gate == 'none')")
        return self._stack_attn("W_G")

    @property
    def W_gate(self) -> Float[Tensor, "layer d_model d_mlp"]:
        return torch.stack([block.mlp.W_gate for block in self.blocks], dim=0)

    @property
    def W_in(self) -> Float[Tensor, "layer d_model d_mlp"]:
        return torch.stack([block.mlp.W_in for block in self.blocks], dim=0)

    @property
    def W_out(self) -> Float[Tensor, "layer d_mlp d_model"]:
        return torch.stack([block.mlp.W_out for block in self.blocks], dim=0)

    def _stack_bias(self, module: str, name: str) -> Tensor:
        return torch.stack([getattr(getattr(block, module), name) for block in self.blocks], dim=0)

    @property
    def b_Q(self) -> Float[Tensor, "layer head d_head"]:
        return self._stack_bias("attn", "b_Q")

    @property
    def b_K(self) -> Float[Tensor, "layer head d_head"]:
        return self._stack_bias("attn", "b_K")

    @property
    def b_V(self) -> Float[Tensor, "layer head d_head"]:
        return self._stack_bias("attn", "b_V")

    @property
    def b_O(self) -> Float[Tensor, "layer d_model"]:
        return self._stack_bias("attn", "b_O")

    @property
    def b_G(self) -> Float[Tensor, "layer head gate"]:
        if not self.cfg.is_gated:
            raise AttributeError("this model has no attention-output gate (cfg.gate == 'none')")
        return self._stack_bias("attn", "b_G")

    @property
    def b_gate(self) -> Float[Tensor, "layer d_mlp"]:
        return self._stack_bias("mlp", "b_gate")

    @property
    def b_in(self) -> Float[Tensor, "layer d_mlp"]:
        return self._stack_bias("mlp", "b_in")

    @property
    def b_out(self) -> Float[Tensor, "layer d_model"]:
        return self._stack_bias("mlp", "b_out")

    @property
    def OV(self):
        from transformer_lens import FactoredMatrix

        return FactoredMatrix(self.W_V, self.W_O)

    @property
    def QK(self):
        from transformer_lens import FactoredMatrix

        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    def __repr__(self) -> str:
        c = self.cfg
        return (
            f"HookedGatedQwen3(gate={c.gate!r}, n_layers={c.n_layers}, d_model={c.d_model}, "
            f"n_heads={c.n_heads}, n_key_value_heads={c.n_key_value_heads}, d_head={c.d_head}, "
            f"d_vocab={c.d_vocab}, params={c.n_params / 1e6:.1f}M)"
        )


def _observer(fn: Callable) -> Callable:
    """A caching hook, marked as one that reads its activation and returns nothing."""

    def hook_fn(tensor: Tensor, hook: HookPoint) -> None:
        fn(tensor, hook=hook)

    hook_fn._observes_only = True
    return hook_fn


# Frames in these places are the library's, not the user's: a warning about a hook filter is
# reported at the first frame outside them (run_with_cache reaches the check through
# TransformerLens; under runtime type checking every call also passes through jaxtyping).
def _package_dir(name: str) -> str | None:
    module = sys.modules.get(name)
    return os.path.dirname(module.__file__) + os.sep if module is not None and module.__file__ else None


def _library_places() -> tuple[str, ...]:
    dirs = [_package_dir(name) for name in ("gated_interp", "transformer_lens", "torch", "jaxtyping", "beartype")]
    return (*[d for d in dirs if d], contextlib.__file__, "<")


def _warn_at_user_line(message: str) -> None:
    """`warnings.warn(message)` reported at the user's line: the first frame outside gated_interp,
    TransformerLens, torch, contextlib, jaxtyping, beartype and generated wrappers."""
    places = _library_places()
    frame = sys._getframe(1)
    while frame.f_back is not None and frame.f_code.co_filename.startswith(places):
        frame = frame.f_back
    warnings.warn_explicit(
        message,
        UserWarning,
        frame.f_code.co_filename,
        frame.f_lineno,
        module=frame.f_globals.get("__name__"),
        registry=frame.f_globals.setdefault("__warningregistry__", {}),
    )


# A hook name no model has: a filter that accepts it accepts by exclusion, not by naming hooks.
_NO_SUCH_HOOK = "blocks.0.hook_no_such_hook_in_any_model"


def _resolve_names_filter(names_filter: Any) -> Any:
    """A `names_filter` whose names (a string or list) may be any spelling `gated_interp.hooks` resolves."""
    if isinstance(names_filter, str):
        return hooks.resolve(names_filter)
    if isinstance(names_filter, (list, tuple, set)):
        return [hooks.resolve(name) for name in names_filter]
    return names_filter


def _unknown_hook_message(model: HookedGatedQwen3, name: str) -> str:
    found = hooks.lookup(name)
    if found is not None and not found[0].exists_in(model.cfg):
        why = "only gated models have it" if found[0].gated_only else "it needs cfg.use_qk_norm"
        return f"{name!r}: this model has no such hook ({why})"
    return f"{name!r} is not a hook of this model; see gated_interp.hooks.HOOKS (or model.hook_dict) for the names"


# The unembedding's parameter was once called `unembed._W_U`; its random initialisation stays
# seeded by that name so that `init_weights(seed)` reproduces the bundled models' starting point.
_SEED_NAMES = {"unembed.W_U": "unembed._W_U"}


def _name_seed(seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _left_pad(
    tokens: Int[Tensor, "batch pos"], mask: Int[Tensor, "batch pos"]
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """Move each row's real tokens to the right end (stable), padding to the left."""
    if bool(mask[:, -1].all()):
        return tokens, mask
    order = torch.argsort(mask, dim=1, stable=True)  # zeros (padding) first, real tokens in order
    return tokens.gather(1, order), mask.gather(1, order)


def _sample(
    logits: Float[Tensor, "batch d_vocab"],
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
) -> Int[Tensor, "batch"]:
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # Drop tokens once the mass before them already reaches top_p; the top token always stays.
        drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]
