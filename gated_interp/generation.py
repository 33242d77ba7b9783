"""Text generation with a key-value cache: TransformerLens' `generate`, greedy or sampled.

A mixin of `HookedGatedQwen3`: it calls the model's forward with `past_kv_cache` (one
`KVCacheEntry` per layer, extended in place) and the tokenisation mixin's `_as_tokens`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from gated_interp.components import KVCacheEntry, RecurrentState
from gated_interp.devices import execution_device
from gated_interp.masks import Mask
from gated_interp.tokenization import ModelInput, PaddingSide


class GenerationMixin:
    """`generate` and its key-value cache."""

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

        Generating past `cfg.n_ctx` (prompt plus `max_new_tokens`) runs, with the warning the
        forward pass gives for tokens that long: positions from n_ctx on are beyond the trained
        context. Stopping there is the caller's choice (`max_new_tokens`), not made silently here.
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
        if tokens.shape[1] <= self.cfg.n_ctx < tokens.shape[1] + max_new_tokens:
            self._warn_past_context()  # a longer prompt was warned about by _as_tokens
        if eos_token_id is None and self.tokenizer is not None:
            eos_token_id = self.tokenizer.eos_token_id
        eos_ids = [] if eos_token_id is None else [int(e) for e in torch.as_tensor(eos_token_id).flatten().tolist()]
        if stop_at_eos and eos_token_id is not None and not eos_ids:
            raise ValueError("eos_token_id is an empty list: give at least one id, or stop_at_eos=False")
        eos = torch.tensor(eos_ids, dtype=torch.long, device=tokens.device)
        generator = torch.Generator(device=self.cfg.device).manual_seed(seed) if seed is not None else None

        finished = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
        kv_cache: list[KVCacheEntry | RecurrentState] | None = None
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

    def _empty_kv_cache(self, batch: int) -> list[KVCacheEntry | RecurrentState]:
        """One entry per layer: keys and values for a full-attention layer, the convolution and
        delta-rule state for a linear-attention (Gated DeltaNet) layer."""
        shape = (batch, 0, self.cfg.n_key_value_heads, self.cfg.d_head)

        def entry(layer: int) -> KVCacheEntry | RecurrentState:
            if self.cfg.layer_type(layer) == "linear_attention":
                return RecurrentState()
            # On the device the layer computes on (a model dispatched across devices extends it there).
            device = execution_device(self.blocks[layer], self.cfg.device)
            return KVCacheEntry(
                torch.empty(shape, dtype=self.cfg.dtype, device=device),
                torch.empty(shape, dtype=self.cfg.dtype, device=device),
            )

        return [entry(layer) for layer in range(self.cfg.n_layers)]


def _left_pad(
    tokens: Int[Tensor, "batch pos"], mask: Mask[Tensor, "batch pos"]
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
