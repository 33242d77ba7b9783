"""Token embedding and unembedding, stored the TransformerLens way (`W_E [d_vocab, d_model]`,
`W_U [d_model, d_vocab]`)."""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from gated_interp.config import GatedQwen3Config


class Embed(nn.Module):
    def __init__(self, cfg: GatedQwen3Config):
        super().__init__()
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model, dtype=cfg.dtype))

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        return self.W_E[tokens]


class Unembed(nn.Module):
    """With tied embeddings there is no weight of its own: `W_U` is a view of `W_E.T`."""

    def __init__(self, cfg: GatedQwen3Config, embed: Embed):
        super().__init__()
        self.tied = cfg.tie_word_embeddings
        # A plain attribute (not a submodule) so the embedding is not registered twice.
        self.__dict__["_embed"] = embed
        if not self.tied:
            self._W_U = nn.Parameter(torch.empty(cfg.d_model, cfg.d_vocab, dtype=cfg.dtype))

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        return self._embed.W_E.T if self.tied else self._W_U

    @property
    def b_U(self) -> Float[Tensor, "d_vocab"]:
        W_U = self.W_U
        return torch.zeros(W_U.shape[-1], dtype=W_U.dtype, device=W_U.device)

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_vocab"]:
        return x @ self.W_U
