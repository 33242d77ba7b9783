"""Token embedding and unembedding, stored the TransformerLens way (`W_E [d_vocab, d_model]`,
`W_U [d_model, d_vocab]`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from gated_interp.components.bias import bias_to_add, register_bias
from gated_interp.config import GatedQwen3Config


class Embed(nn.Module):
    def __init__(self, cfg: GatedQwen3Config):
        super().__init__()
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model, dtype=cfg.dtype))

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        # `F.embedding` (a row gather) rather than `W_E[tokens]`, whose advanced indexing is
        # several times slower on CPU for the same rows.
        return F.embedding(tokens, self.W_E)


class Unembed(nn.Module):
    """`W_U [d_model, d_vocab]` and a zero bias `b_U` (the released format has none).

    With tied embeddings there is no weight of its own: `W_U` is a view of `W_E.T` (and the state
    dict has no `unembed.W_U`). `untie()` gives it its own copy, which folding `ln_final.w` needs.
    """

    def __init__(self, cfg: GatedQwen3Config, embed: Embed):
        super().__init__()
        self.tied = cfg.tie_word_embeddings
        # A plain attribute (not a submodule) so the embedding is not registered twice.
        self.__dict__["_embed"] = embed
        if not self.tied:
            self.W_U = nn.Parameter(torch.empty(cfg.d_model, cfg.d_vocab, dtype=cfg.dtype))
        register_bias(self, "b_U", (cfg.d_vocab,), trainable=False, dtype=cfg.dtype)

    def __getattr__(self, name: str):
        # Only reached when `W_U` is not a registered parameter, i.e. for tied embeddings.
        if name == "W_U" and self.__dict__.get("tied"):
            return self._embed.W_E.T
        return super().__getattr__(name)

    def untie(self) -> None:
        """Give the unembedding its own parameter, a copy of `W_E.T`; the embedding is unchanged."""
        if not self.tied:
            return
        W_U = self._embed.W_E.detach().T.clone()
        self.tied = False
        self.W_U = nn.Parameter(W_U, requires_grad=self._embed.W_E.requires_grad)

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_vocab"]:
        return F.linear(x, self.W_U.T, bias_to_add(self.b_U))
