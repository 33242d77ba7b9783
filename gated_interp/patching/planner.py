"""How a sweep splits its patches into forwards, and what that costs, before anything runs.

A sweep's patches run as copies of the corrupted batch, many copies per forward. Copies in one
forward share the patched layer (the forward starts there) and one start position: for
by-position sweeps the patches of a layer are taken in order of position, and a forward starts
at its first copy's position and takes only copies that start within a quarter of its length
(later copies recompute a few unchanged positions: the price of sharing one forward, at most a
quarter of it). The number of copies per forward is capped so that a forward computes at most
`max_tokens` new tokens (copies × prompts × positions from the start).

`SweepPlan` counts the work: token-layers (one token through one block) of this plan, of the
floor (each copy from its own layer and position, nothing shared), and of TransformerLens' loop
(one full forward per patch). `patch_heads(..., dry_run=True)` returns it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from gated_interp.model import HookedGatedQwen3

# Default cap on new tokens per patched forward (copies × prompts × positions): large enough to
# amortise per-forward overhead; the memory budget below lowers it for large vocabularies.
DEFAULT_MAX_TOKENS = 8192
# Default memory for one forward's activations (see `tokens_per_forward`).
DEFAULT_MEMORY_BUDGET = 2 * 2**30


@dataclass(frozen=True)
class Chunk:
    """One forward: the copies `rows` (indices into the sweep's patches), all in `layer`, run
    from position `start` on."""

    layer: int
    start: int
    rows: Int[Tensor, "k"]


@dataclass(frozen=True)
class SweepPlan:
    """The forwards a sweep will run and the work they do, against TransformerLens' loop."""

    activation: str
    n_patches: int
    n_prompts: int
    n_pos: int
    n_layers: int
    max_tokens: int
    chunks: tuple[Chunk, ...]
    token_layers: float  # this plan, the corrupted run included
    floor_token_layers: float  # each copy from its own layer and position
    tl_token_layers: float  # one full forward per patch

    @property
    def n_forwards(self) -> int:
        """Patched forwards plus the one corrupted run every copy starts from."""
        return len(self.chunks) + 1

    @property
    def max_copies(self) -> int:
        return max((len(c.rows) for c in self.chunks), default=0)

    def __str__(self) -> str:
        return (
            f"patching {self.activation}: {self.n_patches} patches of {self.n_prompts} prompts x {self.n_pos} "
            f"tokens through {self.n_layers} layers, in {self.n_forwards} forwards (up to {self.max_copies} "
            f"copies, {self.max_tokens} new tokens each); {self.token_layers:,.0f} token-layers "
            f"({self.token_layers / self.tl_token_layers:.3f} of TransformerLens' {self.n_patches} forwards, "
            f"{self.tl_token_layers:,.0f}; floor {self.floor_token_layers:,.0f})"
        )


def tokens_per_forward(model: HookedGatedQwen3, n_pos: int, memory_budget: int | None) -> int:
    """New tokens one patched forward may compute: `DEFAULT_MAX_TOKENS`, or fewer where one
    token's activations times that would exceed `memory_budget` bytes (default
    `DEFAULT_MEMORY_BUDGET`). Per token: its logits, the MLP's two hidden layers, a few
    residual-stream copies, a row of attention scores per head, and its keys and values."""
    if memory_budget is not None and memory_budget <= 0:
        raise ValueError(f"memory_budget is in bytes and must be > 0, got {memory_budget}")
    cfg = model.cfg
    per_token = (
        cfg.d_vocab + 3 * cfg.d_mlp + 4 * cfg.d_model + cfg.n_heads * n_pos + 2 * cfg.n_key_value_heads * cfg.d_head
    )
    bytes_per_token = per_token * torch.finfo(cfg.dtype).bits // 8
    if memory_budget is None:
        return max(1, min(DEFAULT_MAX_TOKENS, DEFAULT_MEMORY_BUDGET // bytes_per_token))
    return max(1, memory_budget // bytes_per_token)


def plan_sweep(
    patches: Tensor,
    activation: str,
    shape: tuple[int, int, int],
    max_tokens: int,
    batch_size: int | None,
    per_position: bool,
    first_block_share: float = 1.0,
) -> SweepPlan:
    """Chunks for `patches`, `[patch, (layer, head?, pos?)]` (position last when `per_position`).

    shape: (prompts, positions, layers). batch_size: at most this many copies per forward.
    first_block_share: the part of the patched layer's block a copy computes (z patches start
    after attention, at resid_mid: about half)."""
    n, n_pos, n_layers = shape
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    chunks = []
    for layer in patches[:, 0].unique().tolist():
        rows = (patches[:, 0] == layer).nonzero()[:, 0]
        if per_position:  # by position, so that a forward's copies start close together
            rows = rows[torch.sort(patches[rows, -1], stable=True).indices]
        i = 0
        while i < len(rows):
            start = int(patches[rows[i], -1]) if per_position else 0
            k = max(1, max_tokens // (n * (n_pos - start)))
            if batch_size is not None:
                k = min(k, batch_size)
            if per_position:  # and only copies that start within a quarter of the forward's length
                last = start + (n_pos - start) // 4
                k = min(k, int((patches[rows[i : i + k], -1] <= last).sum()))
            chunks.append(Chunk(layer, start, rows[i : i + k]))
            i += k

    def layers_from(layer: int) -> float:
        return n_layers - layer - (1 - first_block_share)

    ours = n * n_pos * n_layers + sum(len(c.rows) * n * (n_pos - c.start) * layers_from(c.layer) for c in chunks)
    starts = patches[:, -1].tolist() if per_position else [0] * len(patches)
    floor = sum(n * (n_pos - s) * layers_from(lay) for lay, s in zip(patches[:, 0].tolist(), starts))
    return SweepPlan(
        activation,
        len(patches),
        n,
        n_pos,
        n_layers,
        max_tokens,
        tuple(chunks),
        float(ours),
        float(floor),
        float(len(patches) * n * n_pos * n_layers),
    )
