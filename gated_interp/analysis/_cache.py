"""Reading activations out of a cache, with errors that say how to make a cache that has them.

Shared by the measurement modules; nothing here computes a measurement. A "cache" is the
`GatedActivationCache` / `ActivationCache` that `model.run_with_cache(tokens, attention_mask=...)`
returns, or a plain `{hook_name: tensor}` dict of the same keys (batch dimension included).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch
from jaxtyping import Bool
from torch import Tensor

from gated_interp import hooks
from gated_interp.masks import Mask, check_attention_mask

T = TypeVar("T")


def _as_dict(cache: Any) -> Mapping[str, Tensor]:
    return cache.cache_dict if hasattr(cache, "cache_dict") else cache


def _has_batch_dim(cache: Any) -> bool:
    return getattr(cache, "has_batch_dim", True)


def model_cfg(cache: Any) -> Any:
    """The config of the cache's model, or None (a plain dict knows no model)."""
    return getattr(getattr(cache, "model", None), "cfg", None)


def _cache_model_is_ungated(cache: Any) -> bool:
    """True when the cache knows its model and that model has no gate (a plain dict knows no model)."""
    cfg = model_cfg(cache)
    return cfg is not None and not cfg.is_gated


def check_layer_type(cfg: Any, hook: str, layer: int, what: str, where: str | None = None) -> None:
    """Raise a `ValueError` when `hook` does not exist at `layer` because of the layer's type (a
    linear-attention layer has no attention pattern or sigmoid gate; a full-attention layer no
    Gated DeltaNet), naming the layers it does exist on."""
    spec = hooks.spec(hook, where)
    if cfg is None or spec.layer_type is None or cfg.layer_type(layer) == spec.layer_type:
        return
    raise ValueError(f"{what} does not apply to layer {layer}: {spec.absent_because(cfg, layer)}")


def by_true_layer(cache: Any, layers: list[int], values: list[Tensor]) -> Tensor:
    """Per-layer results stacked so that row l is layer l: `[layer, ...]`.

    When the measured layers are 0, 1, ... of a model whose every layer has them, that is the plain
    stack. Otherwise (a hybrid model's full-attention layers, a cache of some layers only) the rows
    span the model's layers (or, for a plain dict, up to the last measured one), with
    `reductions.NOT_MEASURED` (NaN) on the others: no layer is ever renumbered."""
    cfg = model_cfg(cache)
    hybrid = cfg is not None and bool(getattr(cfg, "linear_attention_layers", ()))
    if layers == list(range(len(layers))) and not hybrid:
        return torch.stack(values)
    n_rows = cfg.n_layers if cfg is not None else max(layers) + 1
    out = values[0].new_full((n_rows, *values[0].shape), float("nan"))
    for layer, value in zip(layers, values):
        out[layer] = value
    return out


def layers_with(cache: Any, hook: str) -> list[int]:
    """Sorted layer indices for which the cache holds `hook` (a short name of `gated_interp.hooks`)."""
    wanted = hooks.spec(hook)
    # The hook table parses the keys; only the real names count (not aliases, not `_grad` keys).
    return sorted(
        layer
        for key in _as_dict(cache)
        if (found := hooks.lookup(key)) is not None
        for spec, layer in [found]
        if spec is wanted and layer is not None and key == spec.name(layer)
    )


def missing_hook_error(hook: str, what: str, where: str | None = None) -> KeyError:
    """The one message for an activation a cache lacks: which hook, who needs it, how to keep it."""
    spec = hooks.spec(hook, where)
    filter_word = spec.template.rsplit(".", 1)[-1]  # e.g. hook_pattern
    # A dict cache carries no model, so an ungated model's cache also lands here: say so.
    ungated = " (or, for gate hooks, the cache comes from an ungated baseline model, which has none)"
    return KeyError(
        f"the cache has no {spec.template.format(layer='{l}')} activations, which {what} needs: run "
        f"model.run_with_cache(tokens) without a names_filter that drops them, or with a names_filter "
        f'that keeps them, e.g. names_filter=lambda name: "{filter_word}" in name'
        + (ungated if spec.gated_only else "")
    )


def require_layers(cache: Any, hook: str, what: str) -> list[int]:
    """Layers holding `hook`; raises a `KeyError` naming the fix when there are none."""
    if hooks.spec(hook).gated_only:
        require_gated(cache, what)
    layers = layers_with(cache, hook)
    if not layers:
        raise missing_hook_error(hook, what)
    return layers


def require_gated(cache: Any, what: str) -> None:
    """Raise a `ValueError` if the cache comes from an ungated (baseline) model."""
    if _cache_model_is_ungated(cache):
        raise ValueError(
            f"{what} needs gate scores, but this cache comes from an ungated (baseline, gate='none') model: "
            "use a headwise or elementwise gated model, or report gate measurements as NaN for baselines"
        )


def resolve_layer(cache: Any, hook: str, layer: int, what: str) -> int:
    """`layer` as a 0-based index: negative layers count from the last, as in Python and
    TransformerLens (-1 = the model's last layer; a plain dict cache's last layer holding `hook`).
    Raises a `ValueError` naming the range for a layer outside it."""
    cfg = getattr(getattr(cache, "model", None), "cfg", None)
    n_layers = cfg.n_layers if cfg is not None else max(layers_with(cache, hook), default=-1) + 1
    if n_layers == 0:
        raise missing_hook_error(hook, what)
    if isinstance(layer, bool) or not isinstance(layer, int) or not -n_layers <= layer < n_layers:
        raise ValueError(
            f"layer {layer!r} is out of range for {what}: the model has {n_layers} layers, 0..{n_layers - 1} "
            "(0-based; negative layers count from the last)"
        )
    return layer % n_layers


def get(cache: Any, hook: str, layer: int | None, what: str, where: str | None = None) -> Tensor:
    """The activation `hook` of `layer` (None for hooks outside the blocks; negative layers count
    from the last; `where` picks the RMSNorm of `scale`/`normalized`), with a batch dimension even
    if the cache removed it."""
    spec = hooks.spec(hook, where)
    if spec.gated_only:
        require_gated(cache, what)
    if layer is not None:
        layer = resolve_layer(cache, hook, layer, what)
        check_layer_type(model_cfg(cache), hook, layer, what, where)
    store = _as_dict(cache)
    key = spec.name(layer)
    if key not in store:
        raise missing_hook_error(hook, what, where)
    value = store[key]
    return value if _has_batch_dim(cache) else value[None]


def per_layer(
    cache: Any,
    hook: str,
    attention_mask: Mask[Tensor, "batch pos"] | None,
    what: str,
    reduce: Callable[[Tensor, Bool[Tensor, "batch pos"]], T],
) -> tuple[list[int], list[T]]:
    """`reduce(activation, real)` for every layer the cache holds `hook` of, in layer order, read
    one layer at a time (never stacked, so no second copy of all layers is made). `real` is the
    real-position mask `[batch, pos]` (pos = the key positions of a pattern)."""
    layers = require_layers(cache, hook, what)
    results = []
    for layer in layers:
        value = get(cache, hook, layer, what)
        n_pos = value.shape[-1] if hook == "pattern" else value.shape[1]  # a pattern's mask covers its keys
        results.append(reduce(value, real_positions(attention_mask, value.shape[0], n_pos, value.device)))
    return layers, results


def real_positions(
    attention_mask: Mask[Tensor, "batch pos"] | None, batch: int, n_pos: int, device: torch.device
) -> Bool[Tensor, "batch pos"]:
    """True at real (non-padding) positions; all True without a mask."""
    if attention_mask is None:
        return torch.ones(batch, n_pos, dtype=torch.bool, device=device)
    mask = check_attention_mask(attention_mask).to(device)
    if mask.ndim == 1:
        mask = mask[None]
    if tuple(mask.shape) != (batch, n_pos):
        raise ValueError(
            f"attention_mask has shape {tuple(mask.shape)} but the cached activations are [batch={batch}, "
            f"pos={n_pos}]: pass the mask used for the run_with_cache call that made this cache"
        )
    return mask.bool()
