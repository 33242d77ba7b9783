"""Measurements straight from a model and tokens, at any context length: the one measurement loop.

The cache-based functions (`first_token_attention(cache)`, ...) need every layer's attention
pattern, `[batch, head, pos, pos]` each: 15 GB for one 2,048-token sequence through 28 layers
(`memory.full_cache_bytes`). Here each layer's activations are reduced inside its forward hook,
by the same `analysis.reductions` the cache-based functions call, and dropped, so at most one
layer's activations exist at a time; the attention weight of a key comes from the rotated queries
and keys (`hook_rot_q`, `hook_rot_k`) without the pattern (`attention_to_keys`). The pattern is
never hooked, so the model's own fused attention kernel stays on too.

    m = measure(model, tokens)               # one pass; per-sequence reductions, pooled on demand
    m.summary()                              # {"loss": .., "first_token_attention": .., ...}
    m.first_token_attention("head")          # [layer, head], equal to the cache-based value
    streaming.first_token_attention(model, tokens)     # same names as the cache-based functions
    streaming.gate_stats(model, tokens)

On a hybrid model (Qwen3.5, Qwen3-Next) the attention and gate quantities are reduced on its
full-attention layers (NaN rows elsewhere, pooled over those layers; `Measurement.attention_layers`
says which) and `max_abs_resid` on every layer, exactly as the cache-based functions give them.

`measure` is what `compare_variants`, the model card and the training log
(`gated_interp.train.trainer`) use. The quantities and their names: `analysis.measurement`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from gated_interp._progress import progress_bar, wanted
from gated_interp.analysis import reductions
from gated_interp.analysis._inputs import Prompts, as_batches, n_sequences
from gated_interp.analysis.attention_to_keys import attention_to_keys
from gated_interp.analysis.gates import gate_stats as _cache_gate_stats
from gated_interp.analysis.massive import massive_activations as _cache_massive_activations
from gated_interp.analysis.measurement import QUANTITIES, Measurement
from gated_interp.analysis.memory import full_cache_bytes
from gated_interp.hooks import hook_name
from gated_interp.masks import Mask

__all__ = [
    "LONG_CONTEXT",
    "QUANTITIES",
    "Measurement",
    "attention_to_keys",
    "first_token_attention",
    "full_cache_bytes",
    "gate_stats",
    "key_importance",
    "massive_activations",
    "max_abs_resid_by_layer",
    "measure",
    "sink_rate",
]

# Sequences at least this long get a per-layer progress bar when `progress` is left at None.
LONG_CONTEXT = 2048


class _Reducer:
    """Forward hooks that fold one batch's activations into per-sequence reductions, layer by layer."""

    def __init__(self, model: Any, mask: Mask[Tensor, "batch pos"], key_position: int, bar: Any):
        cfg = model.cfg
        self.model, self.key_position, self.bar = model, key_position, bar
        self.real = mask.bool()
        batch, n_layers, n_heads = mask.shape[0], cfg.n_layers, cfg.n_heads
        # Rows of layers without softmax attention (a hybrid's linear-attention layers) stay NaN.
        self.first_token_sum = torch.full((batch, n_layers, n_heads), reductions.NOT_MEASURED)
        self.key_importance = torch.full((batch, n_layers, n_heads), reductions.NOT_MEASURED)
        self.max_abs_resid = torch.zeros(batch, n_layers)
        self.gate_sum = torch.full((batch, n_layers, n_heads), reductions.NOT_MEASURED)
        self.gate_below = torch.full(
            (batch, n_layers, n_heads, len(reductions.GATE_THRESHOLDS)), reductions.NOT_MEASURED
        )
        self.queries: dict[int, Tensor] = {}
        self.layer_hooks: dict[str, list[Callable[[int, Tensor], None]]] = {}

    def hooks(self) -> list[tuple[str, Callable]]:
        hooks = []
        cfg = self.model.cfg
        for layer in range(cfg.n_layers):
            if cfg.layer_type(layer) == "full_attention":
                hooks.append((hook_name("rot_q", layer), self._keep_queries(layer)))
                hooks.append((hook_name("rot_k", layer), self._from_keys(layer)))
                if cfg.is_gated:
                    hooks.append((hook_name("gate", layer), self._gate(layer)))
            hooks.append((hook_name("resid_post", layer), self._resid(layer)))
        return hooks

    def _keep_queries(self, layer: int) -> Callable:
        def hook(q: Tensor, hook: Any) -> None:
            self.queries[layer] = q

        return hook

    def _from_keys(self, layer: int) -> Callable:
        def hook(k: Tensor, hook: Any) -> None:
            q = self.queries.pop(layer)
            real = self.real.to(q.device)
            # Each sequence's first real token and real token number key_position: positions that
            # differ per sequence with left padding; weights of every such key, then each row's own.
            at = {
                number: reductions.token_position(real, number)
                for number in (reductions.FIRST_TOKEN, self.key_position)
            }
            keys = sorted({int(p) for positions in at.values() for p in positions.tolist() if p >= 0} or {0})
            weights = attention_to_keys(q, k, keys, None if bool(self.real.all()) else real)  # [key, b, h, q]
            rows = torch.arange(q.shape[0], device=q.device)
            key_index = torch.tensor(keys, device=q.device)

            def weight_to(number: int) -> Tensor:  # [batch, head, q_pos]; 0 where the token is missing
                positions = at[number]
                picked = weights[torch.searchsorted(key_index, positions.clamp(min=0)).clamp(max=len(keys) - 1), rows]
                return picked * (positions >= 0)[:, None, None]

            first = reductions.FIRST_TOKEN
            self.first_token_sum[:, layer] = reductions.first_token_attention(weight_to(first), real).cpu()
            self.key_importance[:, layer] = reductions.key_importance(
                weight_to(self.key_position), real, self.key_position
            ).cpu()

        return hook

    def _resid(self, layer: int) -> Callable:
        def hook(resid: Tensor, hook: Any) -> None:
            self.max_abs_resid[:, layer] = reductions.max_abs_resid(resid, self.real).cpu()
            for extra in self.layer_hooks.get("resid_post", []):
                extra(layer, resid)
            if self.bar is not None:
                self.bar.update(1)

        return hook

    def _gate(self, layer: int) -> Callable:
        def hook(gate: Tensor, hook: Any) -> None:
            self.gate_sum[:, layer] = reductions.gate_sum(gate, self.real).cpu()
            for i, threshold in enumerate(reductions.GATE_THRESHOLDS):
                self.gate_below[:, layer, :, i] = reductions.gate_below(gate, self.real, threshold).cpu()
            for extra in self.layer_hooks.get("gate", []):
                extra(layer, gate)

        return hook


def _summed_loss(
    model: Any, resid: Float[Tensor, "batch pos d_model"], tokens: Tensor, mask: Tensor, chunk: int = 1024
) -> Float[Tensor, "batch"]:
    """`model.loss_fn(..., mask, per_token=True)` summed per sequence, from the final residual
    stream, unembedded in position chunks so that the full `[batch, pos, d_vocab]` logits never
    exist at once."""
    total = torch.zeros(tokens.shape[0], device=resid.device)
    n = tokens.shape[1] - 1
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        logits = model.unembed(model.ln_final(resid[:, start:stop]))
        nll = model.loss_fn(
            torch.cat([logits, logits[:, -1:]], dim=1),
            tokens[:, start : stop + 1],
            attention_mask=mask[:, start : stop + 1],
            per_token=True,
        )  # [batch, stop - start]; the appended column only pads the shape
        total += nll.sum(-1)
    return total


@torch.no_grad()
def measure(
    model: Any,
    prompts: Prompts,
    attention_mask: Mask[Tensor, "batch pos"] | None = None,
    batch_size: int | None = 8,
    eps: float = 0.3,
    key_position: int = 0,
    progress: bool | None = None,
    desc: str = "",
    _layer_hooks: dict[str, list[Callable[[int, Tensor], None]]] | None = None,
) -> Measurement:
    """Loss, first-token attention, key importance / sink rate, max |resid_post| and gate sums of
    `model` on `prompts` (strings, right-padded per batch, or a `[batch, pos]` token tensor with an
    optional `attention_mask`), reduced per sequence in one forward pass per batch, each layer
    inside its hooks from queries and keys, without the attention pattern.

    `progress`: a batch bar (when there are several batches), plus a per-layer bar for sequences of
    `LONG_CONTEXT` tokens or more. None (default): only on a terminal; True: always; False: never.
    """
    reductions.check_key_position(key_position)
    reductions.check_eps(eps)
    gated = model.cfg.is_gated
    parts: list[_Reducer] = []
    losses, predicted, queries, reals = [], [], [], []
    total = math.ceil(n_sequences(prompts) / batch_size) if batch_size else 1
    batches = as_batches(model, prompts, batch_size, attention_mask)
    for tokens, mask in progress_bar(batches, progress=progress, long=total > 1, total=total, desc=desc or "measure"):
        if tokens.shape[1] < 2:
            raise ValueError("measurements need sequences of at least 2 tokens (attention to token 0 and loss)")
        long = tokens.shape[1] >= LONG_CONTEXT
        show_layers = wanted(progress, long)
        bar = (
            progress_bar(progress=True, total=model.cfg.n_layers, desc=f"{desc or 'measure'} layers", leave=False)
            if show_layers
            else None
        )
        reducer = _Reducer(model, mask, key_position, bar)
        reducer.layer_hooks = _layer_hooks or {}
        try:
            with model.hooks(fwd_hooks=reducer.hooks()):
                resid = model(tokens, attention_mask=mask, stop_at_layer=model.cfg.n_layers)
            losses.append(_summed_loss(model, resid, tokens, mask).cpu())
        finally:
            if bar is not None:
                bar.close()
        del resid
        real = mask.bool().cpu()
        predicted.append(reductions.predicted_tokens(real))
        queries.append(reductions.first_token_queries(real))
        reals.append(real.float().sum(-1))
        parts.append(reducer)
    width = model.cfg.gate_width if gated else 0
    n_real = torch.cat(reals)
    return Measurement(
        attention_layers=tuple(model.cfg.full_attention_layers),
        gated=gated,
        key_position=key_position,
        eps=eps,
        n_real=n_real,
        loss_sum=torch.cat(losses),
        n_predicted=torch.cat(predicted),
        first_token_sum=torch.cat([p.first_token_sum for p in parts]),
        n_queries=torch.cat(queries),
        key_importance=torch.cat([p.key_importance for p in parts]),
        max_abs_resid=torch.cat([p.max_abs_resid for p in parts]),
        gate_sum=torch.cat([p.gate_sum for p in parts]) if gated else None,
        gate_below=torch.cat([p.gate_below for p in parts]) if gated else None,
        n_gate=n_real * width if gated else None,
    )


# ---- the cache-based functions' names, from a model and tokens ---------------------------------
def first_token_attention(
    model: Any,
    tokens: Prompts,
    attention_mask: Mask[Tensor, "batch pos"] | None = None,
    per: Literal["head", "layer", "model"] = "head",
    batch_size: int | None = 8,
    progress: bool | None = None,
) -> Float[Tensor, "layer head"] | Float[Tensor, "layer"] | Float[Tensor, ""]:
    """As `analysis.first_token_attention(cache, mask, per)`, without a cache."""
    if per not in ("head", "layer", "model"):
        raise ValueError(f"per must be 'head', 'layer' or 'model', got {per!r}")
    return measure(model, tokens, attention_mask, batch_size, progress=progress).first_token_attention(per)


def key_importance(
    model: Any,
    tokens: Prompts,
    key_position: int = 0,
    attention_mask: Mask[Tensor, "batch pos"] | None = None,
    per_sequence: bool = False,
    batch_size: int | None = 8,
    progress: bool | None = None,
) -> Float[Tensor, "layer head"] | Float[Tensor, "seq layer head"]:
    """As `analysis.key_importance(cache, key_position, mask, per_sequence)`, without a cache."""
    m = measure(model, tokens, attention_mask, batch_size, key_position=key_position, progress=progress)
    return m.key_importance if per_sequence else m.key_importance_mean()


def sink_rate(
    model: Any,
    tokens: Prompts,
    eps: float = 0.3,
    key_position: int = 0,
    attention_mask: Mask[Tensor, "batch pos"] | None = None,
    batch_size: int | None = 8,
    progress: bool | None = None,
) -> float:
    """As `analysis.sink_rate(cache, eps, key_position, mask)`, without a cache."""
    return measure(model, tokens, attention_mask, batch_size, eps, key_position, progress=progress).sink_rate()


def max_abs_resid_by_layer(
    model: Any,
    tokens: Prompts,
    attention_mask: Mask[Tensor, "batch pos"] | None = None,
    batch_size: int | None = 8,
    progress: bool | None = None,
) -> Float[Tensor, "layer"]:
    """As `analysis.max_abs_resid_by_layer(cache, mask)`, without a cache."""
    return measure(model, tokens, attention_mask, batch_size, progress=progress).max_abs_resid_by_layer()


def _per_layer_frames(
    model: Any,
    tokens: Prompts,
    attention_mask: Tensor | None,
    hook: str,
    table: Callable[[dict[str, Tensor], Tensor], pd.DataFrame],
    progress: bool | None,
) -> pd.DataFrame:
    """Run the cache-based `table` on each layer's activation alone, inside its hook: the same
    rows as on a full cache of one batch (all sequences in one batch, since medians do not pool)."""
    frames: list[pd.DataFrame] = []
    for batch_tokens, mask in as_batches(model, tokens, None, attention_mask):  # one batch: all sequences

        def collect(layer: int, value: Tensor, mask: Tensor = mask) -> None:
            frames.append(table({hook_name(hook, layer): value}, mask))

        measure(model, batch_tokens, mask, None, progress=progress, _layer_hooks={hook: [collect]})
    return pd.concat(frames, ignore_index=True)


def massive_activations(
    model: Any,
    tokens: Prompts,
    attention_mask: Mask[Tensor, "batch pos"] | None = None,
    threshold: float = 100.0,
    ratio: float = 1000.0,
    progress: bool | None = None,
) -> pd.DataFrame:
    """As `analysis.massive_activations(cache, mask, threshold, ratio)`, without a cache: one
    layer's residual stream at a time."""
    return _per_layer_frames(
        model,
        tokens,
        attention_mask,
        "resid_post",
        lambda cache, mask: _cache_massive_activations(cache, mask, threshold, ratio),
        progress,
    )


def gate_stats(
    model: Any,
    tokens: Prompts,
    attention_mask: Mask[Tensor, "batch pos"] | None = None,
    progress: bool | None = None,
) -> pd.DataFrame:
    """As `analysis.gate_stats(cache, mask)`, without a cache: one layer's gates at a time."""
    if not model.cfg.is_gated:
        raise ValueError(
            "gate_stats needs gate scores, but this is an ungated (baseline, gate='none') model: "
            "use a headwise or elementwise gated model"
        )
    return _per_layer_frames(model, tokens, attention_mask, "gate", _cache_gate_stats, progress)
