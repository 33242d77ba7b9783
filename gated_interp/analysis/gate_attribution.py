"""What opens and closes a gate: direct attribution of a head's gate logit.

A head's gate logit is a linear read-out of the normalised residual stream entering its block,
exactly as a logit is a read-out of the final one through `W_U`:

    gate_logits[b, p, h, :] = (resid_pre[b, p] / scale[b, p]) * ln1.w @ W_G[h] + b_G[h]

with `scale` the cached `blocks.{layer}.ln1.hook_scale`. `resid_pre` is a sum of the embedding,
every earlier head's output `z @ W_O[h]`, every earlier attention bias `b_O` and every earlier
MLP output, so the gate logit splits into one term per component plus the gate bias `b_G`; the
terms sum to the cached gate logit (direct logit attribution, with the same `apply_ln` semantics
as `ActivationCache.decompose_resid` / `apply_ln_to_stack`: divide each component by the cached
scale of the residual that the norm read — here `ln1` of `layer` — so the division is shared and the
sum stays exact).

    _, cache = model.run_with_cache(tokens)
    table = gate_attribution(cache, layer=2, head=1, pos=0)          # one row per component
    stack, labels = gate_attribution_stack(cache, 2, 1)               # [component, batch, pos, gate]

Per-head outputs are computed from the cached `hook_z` and `W_O` (no `use_attn_result` needed).
The norm weight `ln1.w` is applied explicitly, so folded (`load_hooked(fold_ln=True)`, where it is
all ones and lives inside `W_G`) and raw (`fold_ln=False`) models give the same contributions.

Components, in order: "embed", then per earlier layer l: "L{l}H{h}" for each head, "L{l} b_O",
"L{l} mlp_out"; last the gate bias "b_G". On a hybrid model (Qwen3.5, Qwen3-Next) the gated heads
are those of the full-attention layers; an earlier linear-attention layer contributes one term per
Gated DeltaNet value head, "L{l} lin{h}" (`hook_lin_out[..., h, :] @ W_O[h]`, kind "linear_head";
that layer has no `b_O`), and zero-centred norms multiply by `1 + ln1.w`.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from gated_interp.analysis._cache import check_layer_type, get

__all__ = ["gate_attribution", "gate_attribution_stack", "top_gate_contributors"]


def _model_of(cache: Any, model: Any) -> Any:
    model = model if model is not None else getattr(cache, "model", None)
    if model is None:
        raise ValueError(
            "gate_attribution needs the model's weights (W_O, W_G, ln1.w): pass a cache from "
            "model.run_with_cache(...) or give model=..."
        )
    if not model.cfg.is_gated:
        raise ValueError("gate_attribution needs a gated model, but this one has cfg.gate == 'none'")
    return model


def _positions(pos: int | list[int] | Tensor | None, n_pos: int) -> Tensor:
    if pos is None:
        return torch.arange(n_pos)
    index = torch.as_tensor(pos, dtype=torch.long).reshape(-1)
    index = torch.where(index < 0, index + n_pos, index)
    if ((index < 0) | (index >= n_pos)).any():
        raise ValueError(f"pos {pos} is outside the cached sequence length {n_pos}")
    return index


def gate_attribution_stack(
    cache: Any,
    layer: int,
    head: int,
    pos: int | list[int] | Tensor | None = None,
    apply_ln: bool = True,
    model: Any = None,
) -> tuple[Float[Tensor, "component batch pos gate"], list[str]]:
    """Each residual component's contribution to head `head`'s gate logit in block `layer`.

    Returns `(stack [component, batch, pos, gate], labels)`; `pos` selects positions (int, list or
    None for all), `gate` is 1 for headwise gates and `d_head` for elementwise ones. With
    `apply_ln=True` (default) the components are divided by the cached `ln1` scale, multiplied by
    `ln1.w` and read out through `W_G[head]`, and the last row is the gate bias `b_G[head]`: the rows
    sum to `cache["gate_logits", layer][:, pos, head]`. With `apply_ln=False` the components are read
    out unnormalised (as `decompose_resid(apply_ln=False)`), so they do not sum to the gate logit.
    Computed in float64 and returned in float64.
    """
    model = _model_of(cache, model)
    cfg = model.cfg
    if not 0 <= layer < cfg.n_layers:
        raise ValueError(f"layer {layer} is outside 0..{cfg.n_layers - 1}")
    check_layer_type(cfg, "gate", layer, "gate_attribution")
    if not 0 <= head < cfg.n_heads:
        raise ValueError(f"head {head} is outside 0..{cfg.n_heads - 1}")
    what = "gate_attribution"
    embed = get(cache, "embed", None, what)  # [batch, pos, d_model]
    index = _positions(pos, embed.shape[1]).to(embed.device)
    f64 = torch.float64

    def at(t: Tensor) -> Tensor:
        return t.index_select(1, index).to(f64)

    components, labels = [at(embed)], ["embed"]
    for source in range(layer):
        if cfg.layer_type(source) == "linear_attention":
            out = at(get(cache, "lin_out", source, what))  # [batch, pos, lin_v_head, d_lin_value]
            W_O = model.blocks[source].linear_attn.W_O.detach().to(f64)
            components += list(torch.einsum("bphd,hdm->hbpm", out, W_O))
            labels += [f"L{source} lin{h}" for h in range(cfg.linear_n_value_heads)]
        else:
            attn = model.blocks[source].attn
            z = at(get(cache, "z", source, what))  # [batch, pos, head, d_head]
            per_head = torch.einsum("bphd,hdm->hbpm", z, attn.W_O.detach().to(f64))
            components += list(per_head)
            labels += [f"L{source}H{h}" for h in range(cfg.n_heads)]
            components.append(attn.b_O.detach().to(f64).expand_as(components[0]))
            labels.append(f"L{source} b_O")
        components.append(at(get(cache, "mlp_out", source, what)))
        labels.append(f"L{source} mlp_out")
    stack = torch.stack(components)  # [component, batch, pos, d_model]

    attn = model.blocks[layer].attn
    W_G = attn.W_G.detach()[head].to(f64)  # [d_model, gate]
    b_G = attn.b_G.detach()[head].to(f64)  # [gate]
    if apply_ln:
        scale = at(get(cache, "scale", layer, what, where="ln1"))  # [batch, pos, 1]
        ln1 = model.blocks[layer].ln1
        weight = ln1.w.detach().to(f64) + (1.0 if ln1.zero_centred else 0.0)  # what the norm multiplies by
        stack = stack / scale * weight
    out = stack @ W_G  # [component, batch, pos, gate]
    out = torch.cat([out, b_G.expand_as(out[:1])])
    labels.append("b_G")
    return out, labels


def gate_attribution(
    cache: Any,
    layer: int,
    head: int,
    pos: int | list[int] | Tensor | None = None,
    apply_ln: bool = True,
    direction: Float[Tensor, "gate"] | None = None,
    batch_mean: bool = True,
    model: Any = None,
) -> pd.DataFrame:
    """Tidy table of contributions to head `head`'s gate logit in `layer` (see the module text).

    One row per (component, pos, gate element), columns `component, kind ("embed", "head",
    "attn_bias", "mlp", "gate_bias"), source_layer, source_head, pos, gate, contribution`, plus
    `batch` when `batch_mean=False` (otherwise contributions are averaged over the batch, and so
    is the logit they sum to). `gate` is the gate element (always 0 for headwise gates).
    `direction [gate]` (elementwise gates) replaces the per-element rows by their dot product with
    `direction` (e.g. `torch.ones(d_head) / d_head` for the mean logit); `gate` is then -1.
    For each (pos, gate[, batch]) the contributions sum to the gate logit (`apply_ln=True`).
    """
    stack, labels = gate_attribution_stack(cache, layer, head, pos, apply_ln, model)
    n_pos_total = get(cache, "embed", None, "gate_attribution").shape[1]
    positions = _positions(pos, n_pos_total).tolist()
    gate_index = list(range(stack.shape[-1]))
    if direction is not None:
        direction = torch.as_tensor(direction, dtype=stack.dtype)
        if direction.shape != (stack.shape[-1],):
            raise ValueError(f"direction must be [gate] = [{stack.shape[-1]}], got shape {tuple(direction.shape)}")
        stack = (stack @ direction.to(stack.device))[..., None]
        gate_index = [-1]
    if batch_mean:
        stack = stack.mean(dim=1, keepdim=True)
    values = stack.cpu()  # [component, batch', pos, gate']
    comp, bat, p, g = torch.meshgrid(*(torch.arange(s) for s in values.shape), indexing="ij")
    frame = pd.DataFrame(
        {
            "component": [labels[i] for i in comp.flatten().tolist()],
            "batch": bat.flatten().numpy(),
            "pos": [positions[i] for i in p.flatten().tolist()],
            "gate": [gate_index[i] for i in g.flatten().tolist()],
            "contribution": values.flatten().numpy(),
        }
    )
    info = {label: _describe(label) for label in labels}
    frame.insert(1, "kind", frame["component"].map(lambda c: info[c][0]))
    frame.insert(2, "source_layer", frame["component"].map(lambda c: info[c][1]).astype("Int64"))
    frame.insert(3, "source_head", frame["component"].map(lambda c: info[c][2]).astype("Int64"))
    if batch_mean:
        frame = frame.drop(columns="batch")
    frame.attrs.update(layer=layer, head=head, apply_ln=apply_ln)
    return frame


def _describe(label: str) -> tuple[str, int | None, int | None]:
    if label == "embed":
        return "embed", None, None
    if label == "b_G":
        return "gate_bias", None, None
    layer_part, _, rest = label.partition(" ")
    if rest == "b_O":
        return "attn_bias", int(layer_part[1:]), None
    if rest == "mlp_out":
        return "mlp", int(layer_part[1:]), None
    if rest.startswith("lin"):
        return "linear_head", int(layer_part[1:]), int(rest[3:])
    layer_str, head_str = label[1:].split("H")
    return "head", int(layer_str), int(head_str)


def top_gate_contributors(table: pd.DataFrame, k: int = 8) -> pd.DataFrame:
    """The `k` components with the largest |contribution| in a `gate_attribution` table, summed
    over positions and gate elements (rows sorted by |contribution|, largest first)."""
    total = table.groupby("component", sort=False)["contribution"].sum()
    order = total.abs().sort_values(ascending=False).index[:k]
    return total.loc[order].rename("contribution").reset_index()
