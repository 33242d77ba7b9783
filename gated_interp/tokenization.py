"""Text in, tokens out: TransformerLens' tokenisation methods (`to_tokens`, `to_str_tokens`,
`to_string`, `to_single_token`, `get_token_position`, ...) and the turning of a model input
(strings or token ids, padded either side) into tokens and the attention mask to run them with.

A mixin of `HookedGatedQwen3`: it reads `self.cfg` (`n_ctx`, `d_vocab`, `device`,
`default_prepend_bos`, `default_padding_side`) and `self.tokenizer`, a Hugging Face tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Union

import torch
from jaxtyping import Int
from torch import Tensor
from transformer_lens.utilities import get_attention_mask

from gated_interp._user_warnings import warn_at_user_line
from gated_interp.masks import Mask, check_attention_mask

ModelInput = Union[str, Sequence[str], Int[Tensor, "batch pos"], Int[Tensor, "pos"]]
PaddingSide = Literal["left", "right"]
# A batch of no sequences has no logits to speak of and a NaN loss: refused, never run.
EMPTY_BATCH = "empty batch: give at least one sequence (a string, a list of strings or tokens [batch >= 1, pos])"


class TokenizationMixin:
    """Tokenisation with TransformerLens' signatures and padding conventions."""

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
            warn_at_user_line(
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

    # ---- model inputs ----------------------------------------------------------------
    def _as_tokens(
        self,
        input: ModelInput,
        attention_mask: Tensor | None,
        prepend_bos: bool | None,
        padding_side: PaddingSide | None = None,
    ) -> tuple[Int[Tensor, "batch pos"], Mask[Tensor, "batch pos"] | None]:
        """Tokens and the mask to run them with (None: no padding to hide).

        Strings: the mask from tokenizing them. Token tensors without a mask: left-padded ones
        (`padding_side="left"`, or `cfg.default_padding_side`) get the mask TransformerLens
        derives from the leading pad tokens; right padding needs none for the real positions.
        A batch of no sequences is refused (`EMPTY_BATCH`); token tensors longer than `cfg.n_ctx`
        run whole with a warning (`_warn_past_context`)."""
        if isinstance(input, str) or (isinstance(input, (list, tuple)) and input and isinstance(input[0], str)):
            tokens, string_mask = self._tokenize(input, prepend_bos, padding_side)
            if attention_mask is not None:
                attention_mask = check_attention_mask(attention_mask, tuple(tokens.shape)).to(tokens.device)
            if attention_mask is None and not bool(string_mask.all()):
                attention_mask = string_mask
            return tokens, attention_mask
        if isinstance(input, (list, tuple)) and len(input) == 0:
            raise ValueError(EMPTY_BATCH)
        if isinstance(input, Tensor) and input.is_floating_point():
            raise ValueError(
                f"got a float tensor {tuple(input.shape)}, but token ids are integers. To run from embeddings, pass "
                "them as the residual stream entering block 0: model(embeddings, start_at_layer=0) "
                "(tokens=... for a loss)"
            )
        tokens = torch.as_tensor(input, device=self.cfg.device)
        if tokens.dtype == torch.bool:
            raise ValueError(
                f"got a bool tensor {tuple(tokens.shape)} as input, but token ids are integers: if this is an "
                "attention mask, pass it as attention_mask=... beside the tokens"
            )
        if tokens.ndim == 1:
            tokens = tokens[None]
        if tokens.ndim != 2 or tokens.is_floating_point():
            raise ValueError(f"tokens must be an integer tensor [batch, pos], got {tuple(tokens.shape)} {tokens.dtype}")
        if tokens.shape[0] == 0:
            raise ValueError(EMPTY_BATCH)
        if tokens.shape[1] == 0:
            raise ValueError("empty input: give at least one token")
        if tokens.shape[1] > self.cfg.n_ctx:
            self._warn_past_context()
        bad = (tokens < 0) | (tokens >= self.cfg.d_vocab)
        if bool(bad.any()):
            raise ValueError(
                f"token id {int(tokens[bad][0])} is outside the vocabulary (0..{self.cfg.d_vocab - 1}); "
                "were these tokens made with another model's tokenizer?"
            )
        if attention_mask is not None:
            return tokens, check_attention_mask(attention_mask, tuple(tokens.shape)).to(tokens.device)
        pad_id = getattr(self.tokenizer, "pad_token_id", None)
        if self._padding_side(padding_side) == "left" and pad_id is not None and bool((tokens[:, 0] == pad_id).any()):
            prepend = self.default_prepend_bos if prepend_bos is None else prepend_bos
            derived = get_attention_mask(self.tokenizer, tokens, prepend, padding_side="left")
            return tokens, derived.to(tokens.device)
        return tokens, None

    def _warn_past_context(self) -> None:
        """Token ids longer than `cfg.n_ctx` run whole (rotary positions have no hard limit, as in
        Hugging Face's Qwen3), with this warning: positions from n_ctx on are beyond the context the
        model was trained for, so its numbers there are extrapolation, not the model's usual
        behaviour. A string that long is cut to n_ctx by `to_tokens` instead (TransformerLens'
        rule), since cutting it is the tokenizer's choice; cutting a tensor you built would be ours.
        One message whatever the length, so a loop that grows the tokens warns once."""
        n_ctx = self.cfg.n_ctx
        warn_at_user_line(
            f"the tokens run past the model's context (n_ctx={n_ctx} tokens): positions from {n_ctx} on are "
            "beyond what it was trained on, so its numbers there are extrapolation; cut the tokens to "
            f"[:, :{n_ctx}] (as to_tokens does with strings) unless that is what you are measuring"
        )

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
            warn_at_user_line(
                f"row(s) {rows} end in the pad token (id {pad_id}) and no attention_mask was given: the loss counts "
                "those padded positions, as TransformerLens does. To leave them out, pass "
                "attention_mask=model.to_tokens(prompts, return_attention_mask=True)[1] (or the strings themselves)"
            )
