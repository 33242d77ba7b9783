"""Interventions as lists of `(hook_name, hook_fn)` pairs, for
`model.run_with_hooks(tokens, fwd_hooks=hooks)` or `with intervene(model, hooks): ...`.

- gates (`hook_gate`, `[batch, pos, head, gate]`): `open_gates` (score 1: the gated model becomes
  its ungated self), `fix_gates` (a constant), `mean_gates` (a query-independent gate: the mean
  over a reference batch);
- heads (`hook_z`, `[batch, pos, head, d_head]`): `zero_ablate_heads`, `mean_ablate_heads`;
- sinks (`hook_pattern`, `[batch, head, q_pos, k_pos]`): `remove_sink`. Hooking the pattern makes
  the model materialise it instead of using the fused attention kernel: slower, same result.

`ablation_effects` measures the loss (and an optional metric) with and without each intervention.
Layers and heads are 0-based.

On a hybrid model (Qwen3.5, Qwen3-Next) each intervention acts on the layers that have its hook:
the sigmoid gates, `remove_sink` and head `z` on the full-attention layers (the default `layers`);
`open_linear_gates` / `fix_linear_gates` / `mean_linear_gates` on the Gated DeltaNet output gate
`silu(z)` (`hook_lin_gate`, `[batch, pos, lin_v_head, d_lin_value]`) of the linear-attention
layers; `zero_ablate_heads` / `mean_ablate_heads` take (layer, head) pairs of either kind, a
linear-attention head being a value head of `hook_lin_out` (what its `W_O` reads). Naming a layer
of the wrong kind raises, naming the layers of the right one.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from gated_interp._progress import progress_bar
from gated_interp.analysis._inputs import Prompts, as_batches
from gated_interp.analysis.bootstrap import bootstrap_ci
from gated_interp.hooks import hook_name
from gated_interp.masks import Mask
from gated_interp.metrics import Metric, call_metric

Hook = tuple[str, Callable[[Tensor, Any], Tensor]]


# ---- selection -------------------------------------------------------------------------------
# Layers and heads are indexed alike, as Python and TransformerLens index: 0-based, negative
# counting from the last (-1 = the last layer, the last head); anything else is refused by name.
def _indices(chosen: list[Any], n: int, what: str, per: str) -> list[int]:
    bad = [i for i in chosen if isinstance(i, bool) or not isinstance(i, int) or not -n <= i < n]
    if bad:
        raise ValueError(
            f"{what} {bad} out of range: the model has {n} {what}{per} (0-based, 0..{n - 1}; "
            "negative ones count from the last)"
        )
    return [i % n for i in chosen]


# What each layer type's gate, head output and head count are (a hybrid model has both types).
_GATE_HOOK = {"full_attention": "gate", "linear_attention": "lin_gate"}
_HEAD_HOOK = {"full_attention": "z", "linear_attention": "lin_out"}
_COUNTERPART = {
    "full_attention": "the *_linear_gates functions",
    "linear_attention": "open_gates / fix_gates / mean_gates",
}


def _layers(model: Any, layers: Iterable[int] | int | None, layer_type: str | None = None, what: str = "") -> list[int]:
    """The chosen layers (default: every layer of `layer_type`), refusing one of another type."""
    cfg = model.cfg
    n = cfg.n_layers
    if layers is None:
        return [layer for layer in range(n) if layer_type is None or cfg.layer_type(layer) == layer_type]
    chosen = _indices([layers] if isinstance(layers, int) else list(layers), n, "layers", "")
    wrong = [layer for layer in chosen if layer_type is not None and cfg.layer_type(layer) != layer_type]
    if wrong:
        right = [layer for layer in range(n) if cfg.layer_type(layer) == layer_type]
        raise ValueError(
            f"{what} acts on {layer_type} layers ({right}, model.cfg.layer_types), but layers {wrong} are not"
            + (f": for those use {_COUNTERPART[layer_type]}" if "gate" in what else "")
        )
    return chosen


def _n_heads(model: Any, layer: int) -> int:
    cfg = model.cfg
    return cfg.linear_n_value_heads if cfg.layer_type(layer) == "linear_attention" else cfg.n_heads


def _heads(model: Any, heads: Iterable[int] | int | None, n_heads: int | None = None) -> list[int] | slice:
    if heads is None:
        return slice(None)
    chosen = [heads] if isinstance(heads, int) else list(heads)
    return _indices(chosen, n_heads or model.cfg.n_heads, "heads", " per layer")


def _by_layer(model: Any, heads: Sequence[tuple[int, int]]) -> dict[int, list[int]]:
    if not heads:
        raise ValueError("no heads given: pass a list of (layer, head) pairs")
    grouped: dict[int, list[int]] = defaultdict(list)
    for layer, head in heads:
        layer = _layers(model, [layer])[0]
        grouped[layer] += _heads(model, [head], _n_heads(model, layer))
    return dict(grouped)


def _require_gate(model: Any, what: str) -> None:
    if not model.cfg.is_gated:
        raise ValueError(
            f"{what} needs a gated model, but this one is ungated (cfg.gate == 'none'): it has no hook_gate; "
            "use a headwise or elementwise variant"
        )


# ---- gates -----------------------------------------------------------------------------------
def fix_gates(
    model: Any,
    value: float | Tensor,
    layers: Iterable[int] | int | None = None,
    heads: Iterable[int] | int | None = None,
) -> list[Hook]:
    """Set the gate scores of the chosen heads to `value` (a float, or a tensor broadcastable to
    `[pos, n_chosen_heads, gate]`) at every position. A gate score is a sigmoid: every value must
    lie in [0, 1] (NaN and values outside are refused)."""
    _require_gate(model, "fix_gates")
    values = torch.as_tensor(value)
    if values.is_complex() or not bool(((values >= 0) & (values <= 1)).all()):
        raise ValueError(
            f"fix_gates value must be a gate score in [0, 1] (a sigmoid's range; 0 closes the gate, 1 opens it), "
            f"got {value if values.numel() == 1 else 'a tensor with values outside [0, 1] or NaN'}"
        )
    return _fixed(model, value, _layers(model, layers, "full_attention", "fix_gates"), heads)


def _fixed(model: Any, value: float | Tensor, layers: list[int], heads: Iterable[int] | int | None) -> list[Hook]:
    """Hooks setting the chosen heads' gate (sigmoid or silu(z), by each layer's type) to `value`."""

    def hook(gate: Float[Tensor, "batch pos head gate"], hook: Any, head_index: Any) -> Tensor:
        gate = gate.clone()
        gate[:, :, head_index] = torch.as_tensor(value, dtype=gate.dtype, device=gate.device)
        return gate

    return [
        (
            hook_name(_GATE_HOOK[model.cfg.layer_type(layer)], layer),
            partial(hook, head_index=_heads(model, heads, _n_heads(model, layer))),
        )
        for layer in layers
    ]


def open_gates(
    model: Any, layers: Iterable[int] | int | None = None, heads: Iterable[int] | int | None = None
) -> list[Hook]:
    """Gate score 1 on the chosen heads: with all layers and heads, the gated model computes
    exactly what the same weights without a gate would."""
    return fix_gates(model, 1.0, layers, heads)


@torch.no_grad()
def mean_gates(
    model: Any,
    reference_tokens: Int[Tensor, "batch pos"] | Sequence[str],
    layers: Iterable[int] | int | None = None,
    heads: Iterable[int] | int | None = None,
    attention_mask: Mask[Tensor, "batch pos"] | None = None,
    over: Sequence[str] | str = ("batch", "pos"),
) -> list[Hook]:
    """Replace each chosen head's gate by its mean on `reference_tokens` (element-wise for
    elementwise gates), a query-independent gate.

    `over=("batch", "pos")` (default) averages over sequences and real positions: one gate vector
    per head, used at every position. `over="batch"` averages over sequences only, per position:
    runs may then be at most as long as the reference, and a single reference prompt reproduces
    its own run exactly.
    """
    _require_gate(model, "mean_gates")
    return _means(
        model, reference_tokens, _layers(model, layers, "full_attention", "mean_gates"), heads, attention_mask, over
    )


def _means(
    model: Any,
    reference_tokens: Int[Tensor, "batch pos"] | Sequence[str],
    chosen_layers: list[int],
    heads: Iterable[int] | int | None,
    attention_mask: Mask[Tensor, "batch pos"] | None,
    over: Sequence[str] | str,
) -> list[Hook]:
    """`mean_gates` on the chosen layers' gates (sigmoid or silu(z), by each layer's type)."""
    over = (over,) if isinstance(over, str) else tuple(over)
    if set(over) not in ({"batch", "pos"}, {"batch"}):
        raise ValueError(f"over must be ('batch', 'pos') or ('batch',), got {over!r}")
    tokens, mask = next(as_batches(model, reference_tokens, None, attention_mask))
    gate_name = {layer: hook_name(_GATE_HOOK[model.cfg.layer_type(layer)], layer) for layer in chosen_layers}
    names = set(gate_name.values())
    _, cache = model.run_with_cache(tokens, attention_mask=mask, names_filter=lambda name: name in names)
    weights = mask.to(model.cfg.dtype)[:, :, None, None]  # [batch, pos, 1, 1]
    means: dict[int, Tensor] = {}
    for layer in chosen_layers:
        gate = cache[gate_name[layer]]
        if "pos" in over:
            means[layer] = (gate * weights).sum((0, 1)) / weights.sum((0, 1))  # [head, gate]
        else:
            # A position that is padding in every reference sequence keeps a 0/0: say so at use.
            means[layer] = (gate * weights).sum(0) / weights.sum(0)  # [pos, head, gate]

    def make_hook(mean: Tensor, head_index: Any) -> Callable[[Tensor, Any], Tensor]:
        def hook(gate: Float[Tensor, "batch pos head gate"], hook: Any) -> Tensor:
            gate = gate.clone()
            if mean.ndim == 2:
                gate[:, :, head_index] = mean[head_index]
                return gate
            n_pos = gate.shape[1]
            if n_pos > mean.shape[0]:
                raise ValueError(
                    f"mean_gates(over='batch') holds per-position means for {mean.shape[0]} positions but this "
                    f"run has {n_pos}: use a reference batch at least as long, or over=('batch', 'pos')"
                )
            gate[:, :, head_index] = mean[:n_pos, head_index]
            return gate

        return hook

    return [
        (gate_name[layer], make_hook(means[layer], _heads(model, heads, _n_heads(model, layer))))
        for layer in chosen_layers
    ]


# ---- the linear-attention layers' output gate silu(z) -----------------------------------------
# silu's minimum (at z = -1.2785): no output gate can be set below it.
SILU_MIN = -0.2784645427610738


def _require_linear(model: Any, what: str) -> None:
    if not model.cfg.linear_attention_layers:
        raise ValueError(
            f"{what} acts on the Gated DeltaNet output gate silu(z) of linear-attention layers, and this model "
            "has none (every layer is full attention): use open_gates / fix_gates / mean_gates"
        )


def fix_linear_gates(
    model: Any,
    value: float | Tensor,
    layers: Iterable[int] | int | None = None,
    heads: Iterable[int] | int | None = None,
) -> list[Hook]:
    """Set the output gate `silu(z)` (`hook_lin_gate`) of the chosen linear-attention layers (default:
    all) and value heads to `value` (a float, or a tensor broadcastable to `[pos, n_chosen_heads,
    d_lin_value]`). `silu(z)` lies in [SILU_MIN, inf): values below, NaN and inf are refused."""
    _require_linear(model, "fix_linear_gates")
    values = torch.as_tensor(value)
    if values.is_complex() or not bool(((values >= SILU_MIN) & values.isfinite()).all()):
        raise ValueError(
            f"fix_linear_gates value must be an output gate silu(z): a finite number >= {SILU_MIN:.4f} (0 closes "
            f"the gate, 1 takes it out), got {value if values.numel() == 1 else 'a tensor with values outside it'}"
        )
    return _fixed(model, value, _layers(model, layers, "linear_attention", "fix_linear_gates"), heads)


def open_linear_gates(
    model: Any, layers: Iterable[int] | int | None = None, heads: Iterable[int] | int | None = None
) -> list[Hook]:
    """Output gate `silu(z)` 1 on the chosen linear-attention heads: the gated norm then multiplies by
    one, i.e. the layer without its output gate."""
    return fix_linear_gates(model, 1.0, layers, heads)


@torch.no_grad()
def mean_linear_gates(
    model: Any,
    reference_tokens: Int[Tensor, "batch pos"] | Sequence[str],
    layers: Iterable[int] | int | None = None,
    heads: Iterable[int] | int | None = None,
    attention_mask: Mask[Tensor, "batch pos"] | None = None,
    over: Sequence[str] | str = ("batch", "pos"),
) -> list[Hook]:
    """`mean_gates` for the linear-attention layers' output gate `silu(z)`: each chosen value head's
    gate replaced by its element-wise mean on `reference_tokens` (over sequences and real positions,
    or with `over="batch"` per position)."""
    _require_linear(model, "mean_linear_gates")
    chosen = _layers(model, layers, "linear_attention", "mean_linear_gates")
    return _means(model, reference_tokens, chosen, heads, attention_mask, over)


# ---- heads -----------------------------------------------------------------------------------
def _set_heads_hooks(
    model: Any, heads: Sequence[tuple[int, int]], values: Callable[[int], Tensor | float]
) -> list[Hook]:
    def make_hook(layer: int, head_index: list[int]) -> Callable[[Tensor, Any], Tensor]:
        def hook(z: Float[Tensor, "batch pos head d_head"], hook: Any) -> Tensor:
            z = z.clone()
            value = values(layer)
            z[:, :, head_index] = value[head_index] if isinstance(value, Tensor) else value
            return z

        return hook

    return [
        (hook_name(_HEAD_HOOK[model.cfg.layer_type(layer)], layer), make_hook(layer, index))
        for layer, index in _by_layer(model, heads).items()
    ]


def zero_ablate_heads(model: Any, heads: Sequence[tuple[int, int]]) -> list[Hook]:
    """Zero the (gated) output `hook_z` of each `(layer, head)`: the head writes nothing (b_O stays).
    On a linear-attention layer, `head` is a Gated DeltaNet value head and its `hook_lin_out` is zeroed.
    Layers and heads are 0-based; negative ones count from the last (`(-1, -1)`: the last head of
    the last layer)."""
    return _set_heads_hooks(model, heads, lambda layer: 0.0)


@torch.no_grad()
def mean_ablate_heads(
    model: Any,
    heads: Sequence[tuple[int, int]],
    reference_tokens: Int[Tensor, "batch pos"] | Sequence[str],
    attention_mask: Mask[Tensor, "batch pos"] | None = None,
) -> list[Hook]:
    """Replace `hook_z` of each `(layer, head)` by its mean over the reference batch and real
    positions (`[d_head]` per head), at every position; on a linear-attention layer, `hook_lin_out`
    of that value head."""
    grouped = _by_layer(model, heads)
    tokens, mask = next(as_batches(model, reference_tokens, None, attention_mask))
    head_name = {layer: hook_name(_HEAD_HOOK[model.cfg.layer_type(layer)], layer) for layer in grouped}
    names = set(head_name.values())
    _, cache = model.run_with_cache(tokens, attention_mask=mask, names_filter=lambda name: name in names)
    weights = mask.to(model.cfg.dtype)[:, :, None, None]
    means = {
        layer: (cache[head_name[layer]] * weights).sum((0, 1)) / weights.sum((0, 1))  # [head, d_head]
        for layer in grouped
    }
    return _set_heads_hooks(model, heads, lambda layer: means[layer])


# ---- sinks -----------------------------------------------------------------------------------
def remove_sink(
    model: Any,
    layers: Iterable[int] | int | None = None,
    heads: Iterable[int] | int | None = None,
    key_position: int = 0,
) -> list[Hook]:
    """Zero the attention of queries after `key_position` to it and renormalise the rest of each
    row to sum to 1. Query `key_position` keeps its attention (for key 0 it has nothing else to
    see); a row whose whole mass was on the sink becomes all zeros (the head then writes nothing).

    `key_position` is a position of the token tensor as run, an int >= 0: negative positions are
    refused, since "from the end" would name a different token in every run of another length."""
    if isinstance(key_position, bool) or not isinstance(key_position, int) or key_position < 0:
        raise ValueError(
            f"key_position must be an int >= 0 (a position of the tokens as run, 0 = the first), got {key_position!r}"
        )
    head_index = _heads(model, heads)

    def hook(pattern: Float[Tensor, "batch head q_pos k_pos"], hook: Any) -> Tensor:
        n_q, n_k = pattern.shape[-2:]
        first_query = key_position + 1 - (n_k - n_q)  # query rows are the last n_q key positions
        if first_query >= n_q:
            return pattern
        pattern = pattern.clone()
        rows = pattern[:, head_index, max(first_query, 0) :]
        rows[..., key_position] = 0
        rows = rows / rows.sum(-1, keepdim=True).clamp(min=torch.finfo(rows.dtype).tiny)
        pattern[:, head_index, max(first_query, 0) :] = rows
        return pattern

    return [(hook_name("pattern", layer), hook) for layer in _layers(model, layers, "full_attention", "remove_sink")]


# ---- running ---------------------------------------------------------------------------------
@contextmanager
def intervene(model: Any, hooks: Sequence[Hook]) -> Iterator[Any]:
    """`with intervene(model, open_gates(model)): model(tokens)`: the hooks are attached inside the
    block and removed on leaving it, even on error. Yields the model."""
    with model.hooks(fwd_hooks=list(hooks)):
        yield model


@torch.no_grad()
def ablation_effects(
    model: Any,
    prompts_or_tokens: Prompts,
    interventions: Mapping[str, Sequence[Hook]],
    metric: Metric | None = None,
    attention_mask: Mask[Tensor, "batch pos"] | None = None,
    batch_size: int | None = None,
    progress: bool | None = None,
    n_boot: int = 0,
    ci: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Loss (and a `Metric`, if given: `metric(logits)` as in TransformerLens, or
    `metric(logits, tokens, attention_mask)`) with each intervention and without.

    Returns a DataFrame indexed by intervention name, with a first row "clean" (no hooks) and
    columns loss, delta_loss (loss - clean loss) and, with a metric, metric and delta_metric.
    Loss is the mean next-token loss, padding excluded; the metric is averaged over batches,
    weighted by sequences.

    With `n_boot > 0`, every column gains `<column>_lo` and `<column>_hi`: a percentile-bootstrap
    `ci` interval over sequences (`n_boot` resamples, fixed by `seed`; `analysis.bootstrap`). The
    resampling is paired: one draw of sequences serves every intervention and the clean run, so
    the delta intervals are those of the differences. The loss is resampled as a pooled mean
    (summed loss over predicted tokens). The metric needs per-sequence values: a metric that
    returns `[batch]` values is used as is (the table shows their mean); one that returns a scalar
    is called once more on each sequence alone (`logits[i:i+1]`), which requires it to work on a
    batch of one (bind per-prompt answers inside a metric that returns `[batch]` instead).
    """
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0 (0: no intervals), got {n_boot}")
    batches = list(as_batches(model, prompts_or_tokens, batch_size, attention_mask))

    def per_sequence_metric(value: Tensor, logits: Tensor, tokens: Tensor, mask: Tensor) -> Tensor:
        """`[batch]` values from the metric's value on the batch (calling it per sequence if needed)."""
        if value.numel() == tokens.shape[0] and value.ndim == 1:
            return value.double().cpu()
        if value.numel() != 1:
            raise ValueError(
                f"the metric returned shape {tuple(value.shape)}: give a scalar or one value per sequence "
                f"[{tokens.shape[0]}]"
            )
        if not n_boot:
            return value.double().reshape(1).expand(tokens.shape[0]).cpu()
        try:
            single = [
                call_metric(metric, logits[i : i + 1], tokens[i : i + 1], mask[i : i + 1])
                for i in range(tokens.shape[0])
            ]
        except Exception as error:
            raise ValueError(
                "n_boot needs the metric per sequence, and calling it on one sequence (logits[i:i+1]) failed: "
                "return one value per sequence [batch] from the metric instead"
            ) from error
        return torch.tensor([float(v) for v in single], dtype=torch.float64)

    def evaluate(hooks: Sequence[Hook]) -> tuple[dict[str, float], Tensor]:
        """The row, and per-sequence [seq, 3] (loss sum, predicted tokens, metric)."""
        loss_sum = n_predicted = metric_sum = n_seqs = 0.0
        per_seq = []
        with intervene(model, hooks):
            for tokens, mask in batches:
                logits = model(tokens, attention_mask=mask)
                pairs = (mask[:, 1:] * mask[:, :-1]).double()
                counted = float(pairs.sum())
                loss_sum += float(model.loss_fn(logits, tokens, mask)) * counted
                n_predicted += counted
                columns = [pairs.sum(-1).cpu(), pairs.sum(-1).cpu(), torch.zeros(tokens.shape[0], dtype=torch.float64)]
                if n_boot:
                    token_loss = model.loss_fn(logits, tokens, mask, per_token=True).detach().double()
                    columns[0] = (token_loss * pairs).sum(-1).cpu()
                if metric is not None:
                    full = torch.as_tensor(call_metric(metric, logits, tokens, mask)).detach()
                    values = per_sequence_metric(full, logits, tokens, mask)
                    metric_sum += (float(full) if full.numel() == 1 else float(values.mean())) * tokens.shape[0]
                    n_seqs += tokens.shape[0]
                    columns[2] = values
                per_seq.append(torch.stack(columns, dim=-1))
        row = {"loss": loss_sum / n_predicted if n_predicted else float("nan")}
        if metric is not None:
            row["metric"] = metric_sum / n_seqs
        return row, torch.cat(per_seq)

    if "clean" in interventions:
        raise ValueError('"clean" names the run without hooks: give that intervention another name')
    rows, per_seq = {}, []
    for name, hooks in progress_bar({"clean": [], **interventions}.items(), progress=progress, desc="interventions"):
        rows[name], values = evaluate(hooks)
        per_seq.append(values)
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame["delta_loss"] = frame["loss"] - frame.loc["clean", "loss"]
    if metric is not None:
        frame["delta_metric"] = frame["metric"] - frame.loc["clean", "metric"]
    if n_boot:
        columns = ["loss", "delta_loss"] + (["metric", "delta_metric"] if metric is not None else [])
        stacked = torch.stack(per_seq, dim=1)  # [seq, run, (loss sum, count, metric)]

        def statistic(sample: Tensor) -> Tensor:  # [seq, run, 3] -> [column, run]
            loss = sample[..., 0].sum(0) / sample[..., 1].sum(0)
            out = [loss, loss - loss[0]]
            if metric is not None:
                value = sample[..., 2].mean(0)
                out += [value, value - value[0]]
            return torch.stack(out)

        lo, hi = bootstrap_ci(stacked, statistic, n_boot=n_boot, ci=ci, seed=seed)
        for i, column in enumerate(columns):
            frame[f"{column}_lo"] = lo[i].numpy()
            frame[f"{column}_hi"] = hi[i].numpy()
    frame.index.name = "intervention"
    return frame
