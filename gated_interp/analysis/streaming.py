"""Measurements straight from a model and tokens, at any context length: the one measurement loop.

The cache-based functions (`first_token_attention(cache)`, ...) need every layer's attention
pattern, `[batch, head, pos, pos]` each: 15 GB for one 2,048-token sequence through 28 layers.
Here each layer's contribution is reduced inside its forward hook and dropped, so at most one
layer's activations exist at a time, and the attention weight of a key is computed from the rotated
queries and keys (`hook_rot_q`, `hook_rot_k`) without the pattern: the fused attention kernel run
over values that are one-hot at the key returns exactly that key's weight (O(pos) memory); with
left padding, `exp(score_ik - logsumexp_j score_ij)` with the log-sum-exp taken in query chunks
(`O(heads x chunk x pos)`). The pattern is never hooked, so the model's own fused attention kernel
stays on too.

    m = measure(model, tokens)               # one pass; per-sequence reductions, pooled on demand
    m.summary()                              # {"loss": .., "first_token_attention": .., ...}
    m.first_token_attention("head")          # [layer, head], equal to the cache-based value
    streaming.first_token_attention(model, tokens)     # same names as the cache-based functions
    streaming.gate_stats(model, tokens)

`measure` is what `compare_variants`, the model card (`gated_interp.train.card`) and the training
log (`gated_interp.train.trainer`) use; `method="cache"` computes the same reductions from
`run_with_cache` patterns (the old, quadratic-memory path, kept as a reference and refused with the
estimated size when it cannot fit).

Quantities keep one name everywhere: `loss`, `first_token_attention` (the paper's F-Attn),
`sink_rate`, `max_abs_resid` (the paper's M-Act: mean over layers of the largest |resid_post|),
`mean_gate`; per layer `first_token_attention_by_layer`, `max_abs_resid_by_layer`,
`mean_gate_by_layer`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from gated_interp.analysis._inputs import Prompts, as_batches, n_sequences
from gated_interp.analysis.bootstrap import bootstrap_samples
from gated_interp.analysis.gates import gate_stats as _cache_gate_stats
from gated_interp.analysis.massive import massive_activations as _cache_massive_activations
from gated_interp.hooks import hook_name

QUANTITIES = ("first_token_attention", "sink_rate", "max_abs_resid", "mean_gate", "loss")
# Sequences at least this long get a per-layer progress bar when `progress` is left at None.
LONG_CONTEXT = 2048
# Bytes of attention scores one query chunk may hold (the chunk size follows from it).
CHUNK_BYTES = 64 * 2**20


# ---- memory ------------------------------------------------------------------------------------
def available_bytes(device: torch.device | str) -> int:
    """Free memory on `device`: CUDA's free memory, or the host's available RAM."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        import psutil

        return psutil.virtual_memory().available
    except ImportError:  # pragma: no cover - psutil ships with most environments
        with open("/proc/meminfo") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
        return int(fields["MemAvailable"].split()[0]) * 1024


def full_cache_bytes(model: Any, batch: int, pos: int) -> int:
    """Bytes of the attention patterns, residual streams and gates that a `run_with_cache` of the
    measurement hooks holds for one `[batch, pos]` batch (in the model's dtype), plus a float32
    copy of one layer's pattern."""
    cfg = model.cfg
    item = torch.finfo(cfg.dtype).bits // 8
    pattern = batch * cfg.n_heads * pos * pos
    resid = batch * pos * cfg.d_model
    gates = batch * pos * cfg.n_heads * (cfg.gate_width if cfg.is_gated else 0)
    return cfg.n_layers * (pattern + resid + gates) * item + pattern * 4


def check_fits(needed: int, device: torch.device | str, what: str, alternative: str) -> None:
    """Raise a `MemoryError` naming the estimate and `alternative` if `needed` bytes exceed the
    free memory of `device`."""
    free = available_bytes(device)
    if needed > free:
        raise MemoryError(
            f"{what} would need about {needed / 2**30:.1f} GiB, but only {free / 2**30:.1f} GiB is free on "
            f"{torch.device(device)}: {alternative}"
        )


# ---- attention to one key without the pattern -------------------------------------------------
def attention_to_keys(
    q: Float[Tensor, "batch q_pos head d_head"],
    k: Float[Tensor, "batch k_pos kv_head d_head"],
    keys: list[int],
    key_real: Bool[Tensor, "batch k_pos"] | None = None,
    chunk_size: int | None = None,
) -> Float[Tensor, "key batch head q_pos"]:
    """Softmax attention weight that every query gives to each of `keys` (causal; padding keys
    hidden, as in the model), without materialising the `[q_pos, k_pos]` pattern. Float32; scores
    are `q . k / sqrt(d_head)`; query head j reads kv head `j // n_groups`.

    Without padding, or with right padding (every query that matters sees only real keys), the
    fused attention kernel does it: attention over values that are one-hot at the chosen keys
    returns exactly their weights, in O(pos) memory. Otherwise, or with `chunk_size` given, the
    weights are `exp(score - logsumexp(row))` with the log-sum-exp taken in query chunks
    (`[batch, head, chunk, pos]` scores at a time)."""
    right_padded = key_real is None or bool((key_real.long().cumprod(-1) == key_real.long()).all())
    if chunk_size is None and right_padded and len(keys) <= q.shape[-1]:
        return _attention_to_keys_fused(q, k, keys)
    return _attention_to_keys_chunked(q, k, keys, key_real, chunk_size)


def _attention_to_keys_fused(q: Tensor, k: Tensor, keys: list[int]) -> Tensor:
    batch, n, _, d_head = q.shape
    # Value width d_head keeps PyTorch on its fused (flash / memory-efficient) kernel.
    one_hot = q.new_zeros((batch, k.shape[2], n, d_head), dtype=torch.float32)
    for i, key in enumerate(keys):
        one_hot[:, :, key, i] = 1.0
    # Keys and values repeated per query head (small: O(pos)) rather than enable_gqa, which not
    # every fused kernel supports (a fallback to the math kernel would build the whole pattern).
    groups = q.shape[2] // k.shape[2]
    keys_per_head = k.float().transpose(1, 2).repeat_interleave(groups, dim=1)
    values = one_hot.repeat_interleave(groups, dim=1)
    out = F.scaled_dot_product_attention(
        q.float().transpose(1, 2), keys_per_head, values, is_causal=True
    )  # [batch, head, q_pos, d_head]
    return out[..., : len(keys)].permute(3, 0, 1, 2)


def _attention_to_keys_chunked(
    q: Tensor, k: Tensor, keys: list[int], key_real: Tensor | None, chunk_size: int | None
) -> Tensor:
    batch, n, n_heads, d_head = q.shape
    n_kv = k.shape[2]
    groups = n_heads // n_kv
    if chunk_size is None:
        chunk_size = max(1, min(n, CHUNK_BYTES // max(1, 4 * batch * n_heads * n)))
    q_grouped = q.float().permute(0, 2, 1, 3).unflatten(1, (n_kv, groups))  # [batch, kv, group, q_pos, d]
    k_grouped = k.float().permute(0, 2, 3, 1)[:, :, None]  # [batch, kv, 1, d, k_pos]
    key_at = torch.arange(n, device=q.device)
    out = q.new_empty((len(keys), batch, n_heads, n), dtype=torch.float32)
    scale = 1 / math.sqrt(d_head)
    for start in range(0, n, chunk_size):
        stop = min(n, start + chunk_size)
        # Causal: queries start..stop-1 see keys 0..stop-1 at most.
        scores = (q_grouped[:, :, :, start:stop] @ k_grouped[..., :stop]) * scale  # [b, kv, g, chunk, stop]
        visible = key_at[None, :stop] <= key_at[start:stop, None]  # [chunk, stop]
        if key_real is not None:
            # As the model: padding keys hidden, but a query always reads itself.
            own = key_at[None, :stop] == key_at[start:stop, None]
            visible = visible & (key_real[:, None, None, None, :stop].bool() | own)
        scores = scores.masked_fill(~visible, float("-inf"))
        lse = scores.logsumexp(-1)  # [b, kv, g, chunk]
        for i, key in enumerate(keys):
            weight = (scores[..., key] - lse).exp() if key < stop else torch.zeros_like(lse)
            out[i, :, :, start:stop] = weight.flatten(1, 2)
        del scores, lse
    return out


# ---- the per-sequence reductions ---------------------------------------------------------------
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
    gate_below: Float[Tensor, "seq layer head"] | None = None  # how many of them are < 0.1
    n_gate: Float[Tensor, "seq"] | None = None  # real positions x gate width
    extra: dict[str, Any] = field(default_factory=dict)

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
        return Measurement(**taken)

    # pooled quantities, exactly as one batch of all these sequences gives them
    def loss(self) -> float:
        total = self.n_predicted.sum()
        return float(self.loss_sum.sum() / total) if total > 0 else float("nan")

    def first_token_attention(
        self, per: Literal["head", "layer", "model"] = "model"
    ) -> Float[Tensor, "layer head"] | Float[Tensor, "layer"] | Float[Tensor, ""]:
        """Mean attention of real queries >= 1 to position 0: `[layer, head]`, `[layer]` or 0-d."""
        total = self.n_queries.sum()
        if total == 0:
            raise ValueError("no real query at position >= 1: every sequence is a single token")
        result = self.first_token_sum.sum(0) / total
        return {"head": result, "layer": result.mean(-1), "model": result.mean()}[per]

    def key_importance_mean(self) -> Float[Tensor, "layer head"]:
        """Importance of `key_position` averaged over the sequences where it is a real token."""
        valid = ~torch.isnan(self.key_importance[:, 0, 0])
        if not valid.any():
            raise ValueError(f"key position {self.key_position} is padding in every sequence")
        return self.key_importance[valid].mean(0)

    def sink_rate(self) -> float:
        valid = ~torch.isnan(self.key_importance[:, 0, 0])
        if not valid.any():
            raise ValueError(f"key position {self.key_position} is padding in every sequence")
        return float((self.key_importance[valid] > self.eps).float().mean(dim=(1, 2)).mean())

    def max_abs_resid_by_layer(self) -> Float[Tensor, "layer"]:
        return self.max_abs_resid.max(0).values

    def mean_gate_by_layer(self) -> Float[Tensor, "layer"]:
        if not self.gated:
            return torch.full((self.max_abs_resid.shape[1],), float("nan"))
        return self.gate_sum.sum(0).sum(-1) / (self.n_gate.sum() * self.gate_sum.shape[2])

    def mean_gate(self) -> float:
        return float(self.mean_gate_by_layer().mean()) if self.gated else float("nan")

    def gate_frac_below_0_1(self) -> float:
        """Fraction of gate values below 0.1, averaged over (layer, head) (NaN if ungated)."""
        if not self.gated:
            return float("nan")
        return float((self.gate_below.sum(0) / self.n_gate.sum()).mean())

    def summary(self) -> dict[str, float]:
        """The five pooled quantities of `QUANTITIES`, as floats (mean_gate NaN if ungated)."""
        return {
            "first_token_attention": float(self.first_token_attention("model")),
            "sink_rate": self.sink_rate(),
            "max_abs_resid": float(self.max_abs_resid_by_layer().mean()),
            "mean_gate": self.mean_gate(),
            "loss": self.loss(),
        }

    def bootstrap(self, n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> dict[str, tuple[float, float]]:
        """Percentile-bootstrap interval over sequences of each quantity of `summary()`."""
        if not 0 < ci < 1:
            raise ValueError(f"ci must be a coverage between 0 and 1 (e.g. 0.95), got {ci}")

        def statistic(rows: Tensor) -> Tensor:
            picked = self.select(rows.long())
            valid = ~torch.isnan(picked.key_importance[:, 0, 0])
            values = {
                "first_token_attention": float(picked.first_token_attention("model"))
                if picked.n_queries.sum() > 0
                else float("nan"),
                "sink_rate": picked.sink_rate() if valid.any() else float("nan"),
                "max_abs_resid": float(picked.max_abs_resid_by_layer().mean()),
                "mean_gate": picked.mean_gate(),
                "loss": picked.loss(),
            }
            return torch.tensor([values[name] for name in QUANTITIES], dtype=torch.float64)

        samples = bootstrap_samples(torch.arange(self.n_sequences), statistic, n_boot, seed)
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
            result["gate_frac_below_0.1"] = self.gate_frac_below_0_1()
        return result


# ---- the loop ----------------------------------------------------------------------------------
class _Reducer:
    """Forward hooks that fold one batch's activations into per-sequence sums, layer by layer."""

    def __init__(self, model: Any, mask: Int[Tensor, "batch pos"], key_position: int, method: str, bar: Any):
        cfg = model.cfg
        self.model, self.mask, self.key_position, self.method, self.bar = model, mask, key_position, method, bar
        self.real = mask.bool()
        batch, n_layers, n_heads = mask.shape[0], cfg.n_layers, cfg.n_heads
        self.first_token_sum = torch.zeros(batch, n_layers, n_heads)
        self.key_importance = torch.zeros(batch, n_layers, n_heads)
        self.max_abs_resid = torch.zeros(batch, n_layers)
        self.gate_sum = torch.zeros(batch, n_layers, n_heads)
        self.gate_below = torch.zeros(batch, n_layers, n_heads)
        self.queries: dict[int, Tensor] = {}
        self.layer_hooks: dict[str, list[Callable[[int, Tensor], None]]] = {}

    def hooks(self) -> list[tuple[str, Callable]]:
        hooks = []
        for layer in range(self.model.cfg.n_layers):
            if self.method == "stream":
                hooks.append((hook_name("rot_q", layer), self._keep_queries(layer)))
                hooks.append((hook_name("rot_k", layer), self._from_keys(layer)))
            else:
                hooks.append((hook_name("pattern", layer), self._from_pattern(layer)))
            if self.model.cfg.is_gated:
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
            keys = sorted({0, self.key_position})
            weights = attention_to_keys(q, k, keys, None if bool(self.real.all()) else self.real)
            self._reduce_attention(layer, dict(zip(keys, weights)))

        return hook

    def _from_pattern(self, layer: int) -> Callable:
        def hook(pattern: Tensor, hook: Any) -> None:
            keys = sorted({0, self.key_position})
            self._reduce_attention(layer, {key: pattern[..., key].float() for key in keys})

        return hook

    def _reduce_attention(self, layer: int, weights: dict[int, Float[Tensor, "batch head q_pos"]]) -> None:
        real = self.real.float().to(weights[0].device)  # [batch, pos]
        to_first = weights[0][:, :, 1:]  # [batch, head, q >= 1]
        self.first_token_sum[:, layer] = (to_first * real[:, None, 1:]).sum(-1).cpu()
        k = self.key_position
        queries = real[:, k:]  # [batch, q >= k]
        importance = (weights[k][:, :, k:] * queries[:, None]).sum(-1) / queries.sum(-1).clamp(min=1)[:, None]
        importance = importance.masked_fill(~self.real[:, k, None].to(importance.device), float("nan"))
        self.key_importance[:, layer] = importance.cpu()

    def _resid(self, layer: int) -> Callable:
        def hook(resid: Tensor, hook: Any) -> None:
            magnitude = resid.float().abs().amax(-1).masked_fill(~self.real.to(resid.device), float("-inf"))
            self.max_abs_resid[:, layer] = magnitude.amax(-1).cpu()
            for extra in self.layer_hooks.get("resid_post", []):
                extra(layer, resid)
            if self.bar is not None:
                self.bar.update(1)

        return hook

    def _gate(self, layer: int) -> Callable:
        def hook(gate: Tensor, hook: Any) -> None:
            real = self.real.to(gate.device)[..., None, None]  # [batch, pos, 1, 1]
            values = gate.float()
            self.gate_sum[:, layer] = (values * real).sum(dim=(1, 3)).cpu()
            self.gate_below[:, layer] = ((values < 0.1) & real).sum(dim=(1, 3)).float().cpu()
            for extra in self.layer_hooks.get("gate", []):
                extra(layer, gate)

        return hook


def _final_loss(
    model: Any, resid: Float[Tensor, "batch pos d_model"], tokens: Tensor, mask: Tensor, chunk: int = 1024
) -> Float[Tensor, "batch"]:
    """Summed next-token loss per sequence from the final residual stream, unembedded in position
    chunks so that the full `[batch, pos, d_vocab]` logits never exist at once."""
    counted = (mask[:, 1:] * mask[:, :-1]).float()
    total = torch.zeros(tokens.shape[0], device=resid.device)
    n = tokens.shape[1] - 1
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        logits = model.unembed(model.ln_final(resid[:, start:stop]))
        nll = model.loss_fn(
            torch.cat([logits, logits[:, -1:]], dim=1), tokens[:, start : stop + 1], per_token=True
        )  # [batch, stop - start]; the appended column only pads the shape
        total += (nll * counted[:, start:stop]).sum(-1)
    return total


@torch.no_grad()
def measure(
    model: Any,
    prompts: Prompts,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    batch_size: int | None = 8,
    eps: float = 0.3,
    key_position: int = 0,
    method: Literal["stream", "cache"] = "stream",
    progress: bool | None = None,
    desc: str = "",
    _layer_hooks: dict[str, list[Callable[[int, Tensor], None]]] | None = None,
) -> Measurement:
    """Loss, first-token attention, key importance / sink rate, max |resid_post| and gate sums of
    `model` on `prompts` (strings, right-padded per batch, or a `[batch, pos]` token tensor with an
    optional `attention_mask`), reduced per sequence in one forward pass per batch.

    `method="stream"` (default) reduces each layer inside its hooks from queries and keys, without
    the attention pattern; `method="cache"` caches every layer's pattern with `run_with_cache` and
    reduces it afterwards (the quadratic-memory reference: a `MemoryError` with the estimated size
    is raised before a run that cannot fit). `progress`: a
    batch bar, plus a per-layer bar for sequences of `LONG_CONTEXT` tokens or more (None: only for
    those); False for none.
    """
    if method not in ("stream", "cache"):
        raise ValueError(f"method must be 'stream' or 'cache', got {method!r}")
    if key_position < 0:
        raise ValueError(f"key_position must be >= 0, got {key_position}")
    gated = model.cfg.is_gated
    parts: list[_Reducer] = []
    losses, predicted, queries, reals = [], [], [], []
    total = math.ceil(n_sequences(prompts) / batch_size) if batch_size else 1
    batches = as_batches(model, prompts, batch_size, attention_mask)
    for tokens, mask in tqdm(batches, total=total, desc=desc or "measure", disable=progress is not True):
        if tokens.shape[1] < 2:
            raise ValueError("measurements need sequences of at least 2 tokens (attention to token 0 and loss)")
        if key_position >= tokens.shape[1]:
            raise ValueError(f"key_position {key_position} is outside the sequence length {tokens.shape[1]}")
        if method == "cache":
            check_fits(
                full_cache_bytes(model, *tokens.shape),
                model.cfg.device,
                f"caching every layer's attention pattern for a batch of {tokens.shape[0]} x {tokens.shape[1]} tokens",
                "use method='stream' (the default), which never materialises the pattern, or a smaller batch_size",
            )
        long = tokens.shape[1] >= LONG_CONTEXT
        show_layers = progress is True and long or progress is None and long
        bar = tqdm(total=model.cfg.n_layers, desc=f"{desc or 'measure'} layers", leave=False) if show_layers else None
        reducer = _Reducer(model, mask, key_position, method, bar)
        reducer.layer_hooks = _layer_hooks or {}
        try:
            if method == "stream":
                with model.hooks(fwd_hooks=reducer.hooks()):
                    resid = model(tokens, attention_mask=mask, stop_at_layer=model.cfg.n_layers)
            else:
                # The full-cache reference: every layer's pattern is cached, then reduced.
                hooks = dict(reducer.hooks())
                resid, cache = model.run_with_cache(
                    tokens,
                    attention_mask=mask,
                    stop_at_layer=model.cfg.n_layers,
                    names_filter=list(hooks),
                    return_cache_object=False,
                )
                for name, hook in hooks.items():  # in forward order: dicts keep the hooks' order
                    hook(cache[name], None)
                del cache
            losses.append(_final_loss(model, resid, tokens, mask).cpu())
        finally:
            if bar is not None:
                bar.close()
        del resid
        predicted.append((mask[:, 1:] * mask[:, :-1]).sum(-1).float().cpu())
        queries.append(mask[:, 1:].sum(-1).float().cpu())
        reals.append(mask.sum(-1).float().cpu())
        parts.append(reducer)
    width = model.cfg.gate_width if gated else 0
    n_real = torch.cat(reals)
    return Measurement(
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
    attention_mask: Int[Tensor, "batch pos"] | None = None,
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
    attention_mask: Int[Tensor, "batch pos"] | None = None,
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
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    batch_size: int | None = 8,
    progress: bool | None = None,
) -> float:
    """As `analysis.sink_rate(cache, eps, key_position, mask)`, without a cache."""
    return measure(model, tokens, attention_mask, batch_size, eps, key_position, progress=progress).sink_rate()


def max_abs_resid_by_layer(
    model: Any,
    tokens: Prompts,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
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
    attention_mask: Int[Tensor, "batch pos"] | None = None,
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
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    progress: bool | None = None,
) -> pd.DataFrame:
    """As `analysis.gate_stats(cache, mask)`, without a cache: one layer's gates at a time."""
    if not model.cfg.is_gated:
        raise ValueError(
            "gate_stats needs gate scores, but this is an ungated (baseline, gate='none') model: "
            "use a headwise or elementwise gated model"
        )
    return _per_layer_frames(model, tokens, attention_mask, "gate", _cache_gate_stats, progress)
