"""`Measurement`: one model's per-sequence reductions, pooled into the table quantities on demand.

`streaming.measure(model, tokens)` fills it, one layer at a time, with the reductions of
`analysis.reductions`; its methods pool them with the same module's `pool_*` functions, so a
quantity means the same here as in the cache-based functions. Quantities keep one name
everywhere: `loss`, `first_token_attention` (the paper's F-Attn), `sink_rate`, `max_abs_resid`
(the paper's M-Act: mean over layers of the largest |resid_post|), `mean_gate`; per layer
`first_token_attention_by_layer`, `max_abs_resid_by_layer`, `mean_gate_by_layer`; and
`gate_frac_below_0.1`.

On a hybrid model the attention and gate quantities are per-layer tensors with NaN rows for the
linear-attention layers; every pooling over layers runs over `attention_layers` only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from gated_interp.analysis import reductions
from gated_interp.analysis.bootstrap import resample_counts

QUANTITIES = ("first_token_attention", "sink_rate", "max_abs_resid", "mean_gate", "loss")


@dataclass
class Measurement:
    """Per-sequence reductions of one model's run over `seq` sequences; pooled by the methods.

    Sums over real positions per sequence, so that pooling over any subset of sequences (the
    bootstrap's resamples) gives exactly what one batch of those sequences would.
    """

    gated: bool
    key_position: int
    eps: float
    n_real: Float[Tensor, "seq"]  # real tokens
    loss_sum: Float[Tensor, "seq"]  # summed next-token loss over predicted pairs
    n_predicted: Float[Tensor, "seq"]
    first_token_sum: Float[Tensor, "seq layer head"]  # attention of real queries >= 1 to key 0, summed
    n_queries: Float[Tensor, "seq"]  # real queries >= 1
    key_importance: Float[Tensor, "seq layer head"]  # Gu et al.'s importance of key_position (NaN if padding)
    max_abs_resid: Float[Tensor, "seq layer"]  # largest |resid_post| over real positions
    gate_sum: Float[Tensor, "seq layer head"] | None = None  # gate scores summed over real positions, elements
    # how many of them are below each of `reductions.GATE_THRESHOLDS`
    gate_below: Float[Tensor, "seq layer head threshold"] | None = None
    n_gate: Float[Tensor, "seq"] | None = None  # real positions x gate width
    extra: dict[str, Any] = field(default_factory=dict)
    # The layers the attention and gate quantities are measured on (a hybrid model's full-attention
    # layers; None: every layer).
    attention_layers: tuple[int, ...] | None = None

    @property
    def n_sequences(self) -> int:
        return self.n_real.shape[0]

    def select(self, index: Int[Tensor, "n"]) -> Measurement:
        """The same measurement over the sequences `index` (repeats allowed: a resample)."""
        taken = {
            name: (value[index] if isinstance(value, Tensor) else value)
            for name, value in self.__dict__.items()
            if name != "extra"
        }
        taken["attention_layers"] = self.attention_layers
        return Measurement(**taken)

    # pooled quantities, exactly as one batch of all these sequences gives them
    def loss(self) -> float:
        total = self.n_predicted.sum()
        return float(self.loss_sum.sum() / total) if total > 0 else float("nan")

    def first_token_attention(
        self, per: Literal["head", "layer", "model"] = "model"
    ) -> Float[Tensor, "layer head"] | Float[Tensor, "layer"] | Float[Tensor, ""]:
        """Mean attention of real queries >= 1 to position 0: `[layer, head]`, `[layer]` or 0-d."""
        by_head = reductions.pool_mean(self.first_token_sum, self.n_queries, reductions.NO_LATER_QUERY)
        return reductions.average_over(by_head, per)

    def key_importance_mean(self) -> Float[Tensor, "layer head"]:
        """Importance of `key_position` averaged over the sequences where it is a real token."""
        return reductions.pool_key_importance(self.key_importance, self.key_position)

    def sink_rate(self) -> float:
        return reductions.pool_sink_rate(self.key_importance, self.eps, self.key_position)

    def max_abs_resid_by_layer(self) -> Float[Tensor, "layer"]:
        return self.max_abs_resid.max(0).values

    def mean_gate_by_layer(self) -> Float[Tensor, "layer"]:
        """Mean gate score per layer (NaN if ungated): every head has as many scores, so it is the
        mean of the per-head means."""
        if not self.gated:
            return torch.full((self.max_abs_resid.shape[1],), float("nan"))
        return reductions.pool_mean(self.gate_sum, self.n_gate, reductions.NO_REAL_POSITION).mean(-1)

    def mean_gate(self) -> float:
        """Mean gate score over the gated layers (a hybrid's full-attention layers); NaN if ungated."""
        if not self.gated:
            return float("nan")
        by_head = reductions.pool_mean(self.gate_sum, self.n_gate, reductions.NO_REAL_POSITION)
        return float(reductions.average_over(by_head, "model"))

    def gate_frac_below(self, threshold: float = 0.1) -> float:
        """`gate_frac_below_<threshold>`: the fraction of gate values below `threshold` (one of
        `reductions.GATE_THRESHOLDS`), averaged over (layer, head); NaN if ungated."""
        if threshold not in reductions.GATE_THRESHOLDS:
            raise ValueError(
                f"threshold must be one of {reductions.GATE_THRESHOLDS} (those are counted), got {threshold}"
            )
        if not self.gated:
            return float("nan")
        below = self.gate_below[..., reductions.GATE_THRESHOLDS.index(threshold)]
        return float(
            reductions.average_over(reductions.pool_mean(below, self.n_gate, reductions.NO_REAL_POSITION), "model")
        )

    def summary(self) -> dict[str, float]:
        """The five pooled quantities of `QUANTITIES`, as floats (mean_gate NaN if ungated)."""
        return {name: self.summary_of(name) for name in QUANTITIES}

    def bootstrap(self, n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> dict[str, tuple[float, float]]:
        """Percentile-bootstrap interval over sequences of each quantity of `summary()`."""
        if not 0 < ci < 1:
            raise ValueError(f"ci must be a coverage between 0 and 1 (e.g. 0.95), got {ci}")
        if self.n_sequences < 2:
            raise ValueError(f"bootstrap needs at least 2 sequences, got {self.n_sequences}")
        # A whole chunk of resamples at once (a resample without a real query or key gives NaN,
        # left out below): one matrix product per quantity instead of a select() per resample.
        chunks = resample_counts(self.n_sequences, n_boot, seed)
        samples = torch.cat([self.resampled_summaries(counts) for counts in chunks])
        alpha = (1 - ci) / 2
        result = {}
        for i, name in enumerate(QUANTITIES):
            column = samples[:, i]
            column = column[~torch.isnan(column)]
            if column.numel() == 0:
                result[name] = (float("nan"), float("nan"))
                continue
            lo, hi = torch.quantile(column, torch.tensor([alpha, 1 - alpha], dtype=column.dtype))
            result[name] = (float(lo), float(hi))
        return result

    def resampled_summaries(self, counts: Float[Tensor, "boot seq"]) -> Float[Tensor, "boot 5"]:
        """The `QUANTITIES` (columns, in that order) of each resample whose row `counts[b]` says how
        many times it draws each sequence: `self.select(rows).summary()` for all of them at once, in
        float64, NaN where a resample has nothing to pool. Each column is the same pooling as
        `summary_of` (sums over sequences divided by summed counts, maxima over the sequences
        drawn), written for sequences that weigh their count."""
        counts = counts.double()

        def pooled(sums: Tensor, n: Tensor) -> Tensor:
            """Sums `[seq, ...]` over counted items `n [seq]`, pooled per resample and averaged over
            the trailing axes (layers, heads: each has as many items): `[boot]`, NaN if none counted."""
            total = (counts @ n.double())[:, None]
            flat = sums.double().reshape(sums.shape[0], -1)
            flat = flat[
                :, ~torch.isnan(flat).all(0)
            ]  # the measured layers' columns (NaN rows: a hybrid's linear layers)
            means = (counts @ flat) / total
            return means.where(total > 0, torch.nan).mean(1)

        importance = self.key_importance[:, reductions.measured_layers(self.key_importance)]
        real_key = ~torch.isnan(importance[:, 0, 0])  # the sequences reductions.pool_sink_rate keeps
        sinks = (importance > self.eps).double().mean(dim=(1, 2))  # per sequence, as pool_sink_rate
        drawn = (counts > 0)[:, :, None]
        # In the values' own dtype, as max_abs_resid_by_layer: a resample that draws the largest
        # sequence then gives exactly the point estimate.
        resid = self.max_abs_resid[None].where(drawn, -torch.inf).amax(1).mean(-1).double()
        loss = pooled(self.loss_sum, self.n_predicted)
        nan = torch.full_like(loss, torch.nan)
        by_name = {
            "first_token_attention": pooled(self.first_token_sum, self.n_queries),
            "sink_rate": pooled(sinks * real_key, real_key),
            "max_abs_resid": resid,
            "mean_gate": pooled(self.gate_sum, self.n_gate) if self.gated else nan,
            "loss": loss,
        }
        return torch.stack([by_name[name] for name in QUANTITIES], dim=1)

    def summary_of(self, name: str) -> float:
        """One quantity of `summary()` (computing only that one)."""
        compute = {
            "first_token_attention": lambda: float(self.first_token_attention("model")),
            "sink_rate": self.sink_rate,
            "max_abs_resid": lambda: float(self.max_abs_resid_by_layer().mean()),
            "mean_gate": self.mean_gate,
            "loss": self.loss,
        }
        if name not in compute:
            raise KeyError(f"no quantity {name!r}: choose from {QUANTITIES}")
        return compute[name]()

    def as_dict(self) -> dict[str, Any]:
        """Pooled quantities and per-layer lists (JSON-ready: an ungated model has no gate keys),
        one name per quantity."""
        result: dict[str, Any] = self.summary()
        if not self.gated:
            del result["mean_gate"]
        result["first_token_attention_by_layer"] = self.first_token_attention("layer").tolist()
        result["max_abs_resid_by_layer"] = self.max_abs_resid_by_layer().tolist()
        if self.gated:
            result["mean_gate_by_layer"] = self.mean_gate_by_layer().tolist()
            result["gate_frac_below_0.1"] = self.gate_frac_below(0.1)
        if self.attention_layers is not None and len(self.attention_layers) < self.max_abs_resid.shape[1]:
            result["attention_layers"] = list(self.attention_layers)  # the NaN entries above are the others
        return result
