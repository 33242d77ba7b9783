"""Per-head projection weights, TransformerLens-shaped, laid out in memory for one matmul.

A per-head weight has TransformerLens' shape `[head, d_model, d]`, but the forward pass reads
every head at once as one `[d_model, head * d]` matrix (one large matmul, as Hugging Face's
`nn.Linear`; an einsum runs one small matmul per head). Stored contiguously in the shape's
order, that matrix is a transposed copy made on every call: for Qwen3.5-0.8B's shape, tens of
megabytes per layer, a tenth of the forward's time on a CPU. `per_head_weight` stores the
elements in `[d_model, head, d]` order instead, so `as_matrix` is a view. Values, shape,
indexing, `state_dict` keys and loading are unchanged; only the strides differ. A weight in any
other layout (one a user assigned) still gives the same matrix, copied.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn


def per_head_weight(heads: int, d_model: int, width: int, dtype: torch.dtype) -> nn.Parameter:
    """An uninitialised `[heads, d_model, width]` parameter whose memory is `[d_model, heads, width]`."""
    return nn.Parameter(torch.empty_strided((heads, d_model, width), (width, heads * width, 1), dtype=dtype))


def as_matrix(W: Float[Tensor, "head d_model out"]) -> Float[Tensor, "d_model head*out"]:
    """`W [head, d_model, d]` as the matrix `[d_model, head * d]` (head-major columns): a view
    for a weight made by `per_head_weight` (or moved or cast since), else a copy."""
    heads, d_model, width = W.shape
    return W.transpose(0, 1).reshape(d_model, heads * width)
