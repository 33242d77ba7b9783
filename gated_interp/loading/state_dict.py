"""Hugging Face parameter names and layouts ↔ our per-head parameters.

One table (`_layer_params`) says, for every HF tensor of a layer, which of our parameters it
becomes and how it is rearranged; `q_proj` is the one tensor that becomes two (`W_Q` and `W_G`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import einops
from torch import Tensor

from gated_interp.config import GatedQwen3Config
from gated_interp.loading import qproj_layout

# Buffers some checkpoints carry that are recomputed from the config.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)

Rearrange = Callable[[Tensor, GatedQwen3Config], Tensor]


def _kv_weight(t: Tensor, cfg: GatedQwen3Config) -> Tensor:
    return einops.rearrange(t, "(kv d) m -> kv m d", d=cfg.d_head)


def _kv_weight_back(t: Tensor, cfg: GatedQwen3Config) -> Tensor:
    return einops.rearrange(t, "kv m d -> (kv d) m")


def _kv_bias(t: Tensor, cfg: GatedQwen3Config) -> Tensor:
    return einops.rearrange(t, "(kv d) -> kv d", d=cfg.d_head)


def _kv_bias_back(t: Tensor, cfg: GatedQwen3Config) -> Tensor:
    return t.reshape(-1)


def _o_weight(t: Tensor, cfg: GatedQwen3Config) -> Tensor:
    return einops.rearrange(t, "m (h d) -> h d m", d=cfg.d_head)


def _o_weight_back(t: Tensor, cfg: GatedQwen3Config) -> Tensor:
    return einops.rearrange(t, "h d m -> m (h d)")


def _transpose(t: Tensor, cfg: GatedQwen3Config) -> Tensor:
    return t.T


def _same(t: Tensor, cfg: GatedQwen3Config) -> Tensor:
    return t


def _layer_params(cfg: GatedQwen3Config, i: int) -> list[tuple[str, str, Rearrange, Rearrange, tuple[int, ...]]]:
    """(HF name, our name, HF→ours, ours→HF, HF shape) for every tensor of layer i except q_proj."""
    hf, ours = f"model.layers.{i}", f"blocks.{i}"
    m, kv_width, f = cfg.d_model, cfg.n_key_value_heads * cfg.d_head, cfg.d_mlp
    rows = [
        (f"{hf}.input_layernorm.weight", f"{ours}.ln1.w", _same, _same, (m,)),
        (f"{hf}.post_attention_layernorm.weight", f"{ours}.ln2.w", _same, _same, (m,)),
        (f"{hf}.self_attn.k_proj.weight", f"{ours}.attn._W_K", _kv_weight, _kv_weight_back, (kv_width, m)),
        (f"{hf}.self_attn.v_proj.weight", f"{ours}.attn._W_V", _kv_weight, _kv_weight_back, (kv_width, m)),
        (f"{hf}.self_attn.o_proj.weight", f"{ours}.attn.W_O", _o_weight, _o_weight_back, (m, cfg.n_heads * cfg.d_head)),
        (f"{hf}.mlp.gate_proj.weight", f"{ours}.mlp.W_gate", _transpose, _transpose, (f, m)),
        (f"{hf}.mlp.up_proj.weight", f"{ours}.mlp.W_in", _transpose, _transpose, (f, m)),
        (f"{hf}.mlp.down_proj.weight", f"{ours}.mlp.W_out", _transpose, _transpose, (m, f)),
    ]
    if cfg.qkv_bias:
        rows += [
            (f"{hf}.self_attn.k_proj.bias", f"{ours}.attn._b_K", _kv_bias, _kv_bias_back, (kv_width,)),
            (f"{hf}.self_attn.v_proj.bias", f"{ours}.attn._b_V", _kv_bias, _kv_bias_back, (kv_width,)),
            (f"{hf}.self_attn.o_proj.bias", f"{ours}.attn.b_O", _same, _same, (m,)),
        ]
    if cfg.use_qk_norm:
        rows += [
            (f"{hf}.self_attn.q_norm.weight", f"{ours}.attn.q_norm.w", _same, _same, (cfg.d_head,)),
            (f"{hf}.self_attn.k_norm.weight", f"{ours}.attn.k_norm.w", _same, _same, (cfg.d_head,)),
        ]
    return rows


def _global_params(cfg: GatedQwen3Config) -> list[tuple[str, str, Rearrange, Rearrange, tuple[int, ...]]]:
    rows = [
        ("model.embed_tokens.weight", "embed.W_E", _same, _same, (cfg.d_vocab, cfg.d_model)),
        ("model.norm.weight", "ln_final.w", _same, _same, (cfg.d_model,)),
    ]
    if not cfg.tie_word_embeddings:
        rows.append(("lm_head.weight", "unembed.W_U", _transpose, _transpose, (cfg.d_vocab, cfg.d_model)))
    return rows


def expected_hf_shapes(cfg: GatedQwen3Config) -> dict[str, tuple[int, ...]]:
    """Every tensor a checkpoint for `cfg` must hold, with its HF shape."""
    shapes = {row[0]: row[4] for row in _global_params(cfg)}
    for i in range(cfg.n_layers):
        shapes.update({row[0]: row[4] for row in _layer_params(cfg, i)})
        shapes[f"model.layers.{i}.self_attn.q_proj.weight"] = (cfg.d_q_proj, cfg.d_model)
        if cfg.qkv_bias:
            shapes[f"model.layers.{i}.self_attn.q_proj.bias"] = (cfg.d_q_proj,)
    return shapes


# q_proj weight and bias: how to split them, and the names of their query and gate parts.
_Q_PROJ_SPLITS = {
    "weight": (qproj_layout.split_q_proj, "W_Q", "W_G"),
    "bias": (qproj_layout.split_q_bias, "b_Q", "b_G"),
}


def hf_to_ours(
    name: str, tensor: Tensor, cfg: GatedQwen3Config, table: dict[str, tuple[str, Rearrange]]
) -> Iterator[tuple[str, Tensor]]:
    """Our (name, tensor) pairs made from HF tensor `name`; `q_proj` yields both W_Q and W_G.
    `table` is `by_hf_name(cfg)`, built once per checkpoint."""
    prefix, _, kind = name.rpartition("self_attn.q_proj.")
    if prefix and kind in _Q_PROJ_SPLITS:
        split, query_name, gate_name = _Q_PROJ_SPLITS[kind]
        attn = prefix.replace("model.layers.", "blocks.") + "attn."
        queries, gates = split(tensor, cfg)
        yield attn + query_name, queries
        if gates is not None:
            yield attn + gate_name, gates
        return
    our_name, rearrange = table[name]
    yield our_name, rearrange(tensor, cfg)


def by_hf_name(cfg: GatedQwen3Config) -> dict[str, tuple[str, Rearrange]]:
    table = {row[0]: (row[1], row[2]) for row in _global_params(cfg)}
    for i in range(cfg.n_layers):
        table.update({row[0]: (row[1], row[2]) for row in _layer_params(cfg, i)})
    return table


def ours_to_hf(params: dict[str, Tensor], cfg: GatedQwen3Config) -> Iterator[tuple[str, Tensor]]:
    """HF (name, tensor) pairs from our named parameters, in the released layout."""
    for hf_name, our_name, _, back, _ in _global_params(cfg):
        yield hf_name, back(params[our_name], cfg)
    for i in range(cfg.n_layers):
        attn = f"blocks.{i}.attn."
        W_G: Tensor | None = params.get(attn + "W_G")
        yield f"model.layers.{i}.self_attn.q_proj.weight", qproj_layout.merge_q_proj(params[attn + "W_Q"], W_G, cfg)
        if cfg.qkv_bias:
            b_G: Tensor | None = params.get(attn + "b_G")
            yield f"model.layers.{i}.self_attn.q_proj.bias", qproj_layout.merge_q_bias(params[attn + "b_Q"], b_G, cfg)
        for hf_name, our_name, _, back, _ in _layer_params(cfg, i):
            yield hf_name, back(params[our_name], cfg)
