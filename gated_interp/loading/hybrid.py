"""Qwen3.5 and Qwen3-Next folders (transformers' `qwen3_5*`, `qwen3_next`) ↔ our config and weights.

These families differ from the paper's release in ways the config names (`layer_types`, gate
rows per query head, partial rotary, zero-centred norms, Gated DeltaNet and MoE sizes) and in
their tensor names. `FAMILIES` says, per model type, where the language model's weights sit and
how the DeltaNet projections are packed; `expected_shapes` and `to_ours` are the one table of
every tensor a folder must hold and what it becomes. config.json is read as JSON only.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import einops
import torch
from torch import Tensor

from gated_interp.config import GatedQwen3Config
from gated_interp.loading.errors import CheckpointError


@dataclass(frozen=True)
class Family:
    architecture: str  # what transformers builds from such a folder
    prefix: str  # where the language model's weights sit
    packed_deltanet: bool  # Qwen3-Next packs in_proj_qkvz / in_proj_ba per key head
    moe: str  # "none", "all" (Qwen3.5-MoE) or "step" (Qwen3-Next: decoder_sparse_step, mlp_only_layers)
    vision: bool  # config.json nests text_config beside a vision_config


FAMILIES: dict[str, Family] = {
    "qwen3_5_text": Family("Qwen3_5ForCausalLM", "model.", False, "none", False),
    "qwen3_5": Family("Qwen3_5ForConditionalGeneration", "model.language_model.", False, "none", True),
    "qwen3_5_moe_text": Family("Qwen3_5MoeForCausalLM", "model.", False, "all", False),
    "qwen3_5_moe": Family("Qwen3_5MoeForConditionalGeneration", "model.language_model.", False, "all", True),
    "qwen3_next": Family("Qwen3NextForCausalLM", "model.", True, "step", False),
}
# Tensors a folder may carry that the language model does not use: the vision tower (left out,
# said once) and the multi-token-prediction head (transformers drops it too).
VISION_PREFIX = "model.visual."
IGNORED_PREFIXES = ("mtp.", VISION_PREFIX)
_ARCHITECTURE_FAMILY = {family.architecture: model_type for model_type, family in FAMILIES.items()}
# gated_interp's own config.json key, false for a model without the attention-output gate (the
# ungated twin `gated_interp.train` trains beside a gated one). The families' format cannot say
# "no gate" (transformers' Qwen3.5 always gates), so such a model is written with its gate rows of
# q_proj all zero (sigmoid(0) = 1/2 exactly) and o_proj doubled: transformers computes the same
# function, and loading reads it back ungated after checking that the gate rows are zero.
UNGATED_KEY = "gated_interp_attn_output_gate"


def is_hybrid_family(cfg: GatedQwen3Config) -> bool:
    """Whether `cfg` is one of these families (its folder layout is read and written here)."""
    return cfg.original_architecture in _ARCHITECTURE_FAMILY


def family_of(cfg: GatedQwen3Config) -> Family:
    if cfg.original_architecture not in _ARCHITECTURE_FAMILY:
        raise ValueError(
            f"{cfg.original_architecture!r} is not one of the hybrid families {list(_ARCHITECTURE_FAMILY)}"
        )
    return FAMILIES[_ARCHITECTURE_FAMILY[cfg.original_architecture]]


def text_config(hf: dict[str, Any]) -> dict[str, Any]:
    """The language model's keys: `text_config` of a vision-language folder, else the config itself."""
    if not FAMILIES[hf["model_type"]].vision:
        return hf
    text = hf.get("text_config")
    if not isinstance(text, dict):
        raise CheckpointError(f"config.json of a {hf['model_type']!r} model must hold a text_config object")
    text = dict(text)
    if text.get("tie_word_embeddings") is None and hf.get("tie_word_embeddings") is not None:
        text["tie_word_embeddings"] = hf["tie_word_embeddings"]
    return text


def _int(text: dict[str, Any], key: str, default: int | None = None) -> int:
    value = text.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CheckpointError(f"config.json: {key} must be a whole number >= 0, got {value!r}; fix config.json")
    return value


def config_from_hybrid_hf(
    hf: dict[str, Any], *, tie_word_embeddings_default: bool, dtype: torch.dtype, device: str | None, model_name: str
) -> GatedQwen3Config:
    family = FAMILIES[hf["model_type"]]
    text = text_config(hf)
    n_layers = _int(text, "num_hidden_layers")
    layer_types = text.get("layer_types")
    if layer_types is None:  # transformers' default: every full_attention_interval-th layer is full
        interval = _int(text, "full_attention_interval", 4)
        layer_types = ["full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(n_layers)]
    moe_layers: tuple[int, ...] = ()
    if family.moe == "all":
        moe_layers = tuple(range(n_layers))
    elif family.moe == "step" and _int(text, "num_experts", 0) > 0:
        step, dense_only = _int(text, "decoder_sparse_step", 1), set(text.get("mlp_only_layers") or [])
        moe_layers = tuple(i for i in range(n_layers) if i not in dense_only and (i + 1) % step == 0)
    rope = text.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default":
        raise CheckpointError(f"config.json: rope_type {rope.get('rope_type')!r} is not supported (default only)")
    if text.get("attention_bias"):
        raise CheckpointError("config.json sets attention_bias: the hybrid families are read without biases")
    n_heads, d_model = _int(text, "num_attention_heads"), _int(text, "hidden_size")
    if text.get(UNGATED_KEY, True) not in (True, False):
        raise CheckpointError(f"config.json: {UNGATED_KEY} must be true or false, got {text[UNGATED_KEY]!r}")
    try:
        return GatedQwen3Config(
            d_model=d_model,
            n_layers=n_layers,
            n_heads=n_heads,
            n_key_value_heads=_int(text, "num_key_value_heads", n_heads),
            d_head=text.get("head_dim") or d_model // n_heads,
            d_mlp=_int(text, "intermediate_size", 0),
            d_vocab=_int(text, "vocab_size"),
            n_ctx=text.get("max_position_embeddings") or 2048,
            gate="elementwise" if text.get(UNGATED_KEY, True) else "none",
            gate_layout="per_head",
            use_qk_norm=True,
            tie_word_embeddings=bool(text.get("tie_word_embeddings", tie_word_embeddings_default)),
            rms_norm_eps=float(text.get("rms_norm_eps") or 1e-6),
            rope_theta=float(rope.get("rope_theta", text.get("rope_theta", 10_000.0))),
            partial_rotary_factor=float(rope.get("partial_rotary_factor", text.get("partial_rotary_factor", 1.0))),
            zero_centred_norms=True,
            layer_types=tuple(layer_types),
            linear_n_key_heads=_int(text, "linear_num_key_heads", 16),
            linear_n_value_heads=_int(text, "linear_num_value_heads", 32),
            linear_d_key=_int(text, "linear_key_head_dim", 128),
            linear_d_value=_int(text, "linear_value_head_dim", 128),
            linear_conv_kernel=_int(text, "linear_conv_kernel_dim", 4),
            moe_layers=moe_layers,
            n_experts=_int(text, "num_experts", 0) if moe_layers else 0,
            n_experts_per_token=_int(text, "num_experts_per_tok", 0) if moe_layers else 0,
            d_mlp_expert=_int(text, "moe_intermediate_size", 0) if moe_layers else 0,
            d_mlp_shared=_int(text, "shared_expert_intermediate_size", 0) if moe_layers else 0,
            # Qwen3.5-MoE's router always renormalises; Qwen3-Next's says so in its config.
            norm_topk_prob=bool(text.get("norm_topk_prob", True)) if family.moe == "step" else True,
            original_architecture=family.architecture,
            model_name=model_name,
            dtype=dtype,
            device=device,
            hf_extra={"config_json": hf},  # written back as it was by save_hf
        )
    except ValueError as error:
        raise CheckpointError(f"config.json describes a model gated_interp cannot build: {error}") from None


# ---- weights ---------------------------------------------------------------------------------
# One row per checkpoint tensor: (HF name, HF shape, [(our parameter, expert or None, HF tensor → ours)]).
Part = tuple[str, "int | None", Any]


def _heads(width: int):
    return lambda t: einops.rearrange(t, "(h d) m -> h m d", d=width)


def _q_proj_half(d: int, half: int):
    """Queries (0) or gate logits (1) of a q_proj whose rows go per query head: [query (d), gate (d)]."""
    return lambda t: einops.rearrange(t, "(h two d) m -> two h m d", two=2, d=d)[half]


def _t(t: Tensor) -> Tensor:
    return t.T


def _same(t: Tensor) -> Tensor:
    return t


def _rows(cfg: GatedQwen3Config, family: Family | None = None) -> Iterator[tuple[str, tuple[int, ...], list[Part]]]:
    family = family or family_of(cfg)
    p = family.prefix
    m, h, kv, d = cfg.d_model, cfg.n_heads, cfg.n_key_value_heads, cfg.d_head
    yield f"{p}embed_tokens.weight", (cfg.d_vocab, m), [("embed.W_E", None, _same)]
    yield f"{p}norm.weight", (m,), [("ln_final.w", None, _same)]
    if not cfg.tie_word_embeddings:
        yield "lm_head.weight", (cfg.d_vocab, m), [("unembed.W_U", None, _t)]
    for i in range(cfg.n_layers):
        hf, ours = f"{p}layers.{i}", f"blocks.{i}"
        yield f"{hf}.input_layernorm.weight", (m,), [(f"{ours}.ln1.w", None, _same)]
        yield f"{hf}.post_attention_layernorm.weight", (m,), [(f"{ours}.ln2.w", None, _same)]
        if cfg.layer_type(i) == "full_attention":
            a, att = f"{hf}.self_attn", f"{ours}.attn"
            # q_proj per query head: [query (d), gate (d)] for head 0, then head 1, ...
            yield (
                f"{a}.q_proj.weight",
                (2 * h * d, m),
                [
                    (f"{att}.W_Q", None, _q_proj_half(d, 0)),
                    (f"{att}.W_G", None, _q_proj_half(d, 1)),
                ],
            )
            yield f"{a}.k_proj.weight", (kv * d, m), [(f"{att}._W_K", None, _heads(d))]
            yield f"{a}.v_proj.weight", (kv * d, m), [(f"{att}._W_V", None, _heads(d))]
            yield (
                f"{a}.o_proj.weight",
                (m, h * d),
                [(f"{att}.W_O", None, lambda t: einops.rearrange(t, "m (h d) -> h d m", d=d))],
            )
            yield f"{a}.q_norm.weight", (d,), [(f"{att}.q_norm.w", None, _same)]
            yield f"{a}.k_norm.weight", (d,), [(f"{att}.k_norm.w", None, _same)]
        else:
            yield from _deltanet_rows(f"{hf}.linear_attn", f"{ours}.linear_attn", cfg, family.packed_deltanet)
        if cfg.mlp_kind(i) == "moe":
            yield from _moe_rows(f"{hf}.mlp", f"{ours}.mlp", cfg)
        else:
            for name, ours_name, shape in (
                ("gate_proj", "W_gate", (cfg.d_mlp, m)),
                ("up_proj", "W_in", (cfg.d_mlp, m)),
                ("down_proj", "W_out", (m, cfg.d_mlp)),
            ):
                yield f"{hf}.mlp.{name}.weight", shape, [(f"{ours}.mlp.{ours_name}", None, _t)]


def _deltanet_rows(
    hf: str, ours: str, cfg: GatedQwen3Config, packed: bool
) -> Iterator[tuple[str, tuple[int, ...], list[Part]]]:
    m = cfg.d_model
    kh, vh, dk, dv = cfg.linear_n_key_heads, cfg.linear_n_value_heads, cfg.linear_d_key, cfg.linear_d_value
    conv_dim = 2 * kh * dk + vh * dv
    if packed:
        # Qwen3-Next: rows grouped per key head: [q (dk), k (dk), v (r*dv), z (r*dv)], r value heads per key head.
        r = vh // kh
        sizes = [dk, dk, r * dv, r * dv]

        def qkvz(part: int, width: int):
            def take(t: Tensor) -> Tensor:
                chunk = t.view(kh, sum(sizes), m).split(sizes, dim=1)[part]  # [kh, r*w or dk, m]
                return einops.rearrange(chunk, "g (r w) m -> (g r) m w", w=width)

            return take

        yield (
            f"{hf}.in_proj_qkvz.weight",
            (2 * kh * dk + 2 * vh * dv, m),
            [
                (f"{ours}.W_Q", None, qkvz(0, dk)),
                (f"{ours}.W_K", None, qkvz(1, dk)),
                (f"{ours}.W_V", None, qkvz(2, dv)),
                (f"{ours}.W_Z", None, qkvz(3, dv)),
            ],
        )
        ba = lambda part: lambda t: t.view(kh, 2 * r, m).split([r, r], dim=1)[part].reshape(vh, m).T  # noqa: E731
        yield f"{hf}.in_proj_ba.weight", (2 * vh, m), [(f"{ours}.W_b", None, ba(0)), (f"{ours}.W_a", None, ba(1))]
    else:
        split = lambda part, width: lambda t: _heads(width)(t.split([kh * dk, kh * dk, vh * dv])[part])  # noqa: E731
        yield (
            f"{hf}.in_proj_qkv.weight",
            (conv_dim, m),
            [
                (f"{ours}.W_Q", None, split(0, dk)),
                (f"{ours}.W_K", None, split(1, dk)),
                (f"{ours}.W_V", None, split(2, dv)),
            ],
        )
        yield f"{hf}.in_proj_z.weight", (vh * dv, m), [(f"{ours}.W_Z", None, _heads(dv))]
        yield f"{hf}.in_proj_b.weight", (vh, m), [(f"{ours}.W_b", None, _t)]
        yield f"{hf}.in_proj_a.weight", (vh, m), [(f"{ours}.W_a", None, _t)]
    yield f"{hf}.conv1d.weight", (conv_dim, 1, cfg.linear_conv_kernel), [(f"{ours}.conv", None, lambda t: t[:, 0])]
    yield f"{hf}.A_log", (vh,), [(f"{ours}.A_log", None, _same)]
    yield f"{hf}.dt_bias", (vh,), [(f"{ours}.dt_bias", None, _same)]
    yield f"{hf}.norm.weight", (dv,), [(f"{ours}.norm_w", None, _same)]
    yield (
        f"{hf}.out_proj.weight",
        (m, vh * dv),
        [(f"{ours}.W_O", None, lambda t: einops.rearrange(t, "m (h d) -> h d m", d=dv))],
    )


# Routed experts sit on disk either one module per expert (`experts.{e}.gate_proj.weight`, ...) or
# fused, as transformers' modules hold them (`experts.gate_up_proj [expert, 2 d_mlp_expert, d_model]`,
# gate rows first, and `experts.down_proj [expert, d_model, d_mlp_expert]`); transformers reads both
# for qwen3_5_moe and qwen3_next (conversion_mapping's "qwen2_moe" merges the first into the second).
# `cfg.hf_extra[FUSED_EXPERTS]` records which a folder had, so that `save_hf` writes it back so.
FUSED_EXPERTS = "fused_experts"


def note_expert_layout(cfg: GatedQwen3Config, names: set[str]) -> None:
    """Record in `cfg` whether the folder's tensor `names` hold fused experts (read by `_moe_rows`)."""
    cfg.hf_extra[FUSED_EXPERTS] = any(name.endswith(".mlp.experts.gate_up_proj") for name in names)


def _moe_rows(hf: str, ours: str, cfg: GatedQwen3Config) -> Iterator[tuple[str, tuple[int, ...], list[Part]]]:
    m, f, e = cfg.d_model, cfg.d_mlp_expert, cfg.n_experts
    yield f"{hf}.gate.weight", (e, m), [(f"{ours}.W_router", None, _t)]
    if cfg.hf_extra.get(FUSED_EXPERTS):
        yield (
            f"{hf}.experts.gate_up_proj",
            (e, 2 * f, m),
            [
                (f"{ours}.W_gate", None, lambda t: t[:, :f].transpose(1, 2)),
                (f"{ours}.W_in", None, lambda t: t[:, f:].transpose(1, 2)),
            ],
        )
        yield f"{hf}.experts.down_proj", (e, m, f), [(f"{ours}.W_out", None, lambda t: t.transpose(1, 2))]
    else:
        for expert in range(e):
            yield f"{hf}.experts.{expert}.gate_proj.weight", (f, m), [(f"{ours}.W_gate", expert, _t)]
            yield f"{hf}.experts.{expert}.up_proj.weight", (f, m), [(f"{ours}.W_in", expert, _t)]
            yield f"{hf}.experts.{expert}.down_proj.weight", (m, f), [(f"{ours}.W_out", expert, _t)]
    if cfg.d_mlp_shared:
        s = cfg.d_mlp_shared
        for name, ours_name, shape in (
            ("gate_proj", "W_gate", (s, m)),
            ("up_proj", "W_in", (s, m)),
            ("down_proj", "W_out", (m, s)),
        ):
            yield f"{hf}.shared_expert.{name}.weight", shape, [(f"{ours}.shared_expert.{ours_name}", None, _t)]
        yield f"{hf}.shared_expert_gate.weight", (1, m), [(f"{ours}.W_shared_gate", None, _t)]


def expected_shapes(cfg: GatedQwen3Config) -> dict[str, tuple[int, ...]]:
    """Every tensor a folder for `cfg` must hold, with its shape."""
    return {name: shape for name, shape, _ in _rows(cfg)}


def by_hf_name(cfg: GatedQwen3Config) -> dict[str, list[Part]]:
    """HF tensor → the parts it loads into. For an ungated model (`UNGATED_KEY`) the gate rows
    load into nothing (parameter name None) but must be zero, and o_proj is halved."""
    table = {name: parts for name, _, parts in _rows(cfg)}
    if cfg.gate != "none":
        return table
    for name, parts in table.items():
        if name.endswith("self_attn.q_proj.weight"):
            table[name] = [parts[0], (None, None, _zero_gate_rows(name, parts[1][2]))]
        elif name.endswith("self_attn.o_proj.weight"):
            ((ours, expert, rearrange),) = parts
            table[name] = [(ours, expert, lambda t, rearrange=rearrange: rearrange(t) / 2)]
    return table


def _zero_gate_rows(name: str, gate_half: Any) -> Any:
    def check(t: Tensor) -> None:
        if bool(gate_half(t).any()):
            raise CheckpointError(
                f"config.json sets {UNGATED_KEY}: false, but the gate rows of {name} are not zero: the folder "
                f"holds a gated model. Remove {UNGATED_KEY} from config.json to load it with its gate"
            )

    return check


def with_neutral_gate(params: dict[str, Tensor], cfg: GatedQwen3Config) -> dict[str, Tensor]:
    """An ungated model's parameters as the gated layout stores them: zero gate weights (every
    gate 1/2) and each full-attention o_proj doubled, the same function (`UNGATED_KEY`)."""
    out = dict(params)
    for layer in cfg.full_attention_layers:
        att = f"blocks.{layer}.attn"
        w_q = params[f"{att}.W_Q"]
        out[f"{att}.W_G"] = torch.zeros_like(w_q)
        out[f"{att}.W_O"] = params[f"{att}.W_O"] * 2
    return out


def ignored(name: str) -> bool:
    """Tensors read past: the vision tower and the multi-token-prediction head."""
    return name.startswith(IGNORED_PREFIXES)


# ---- saving: the same table, read backwards ----------------------------------------------------
# A vision-language folder is loaded without its vision tower, so it is saved as its text-only family.
TEXT_ONLY = {"qwen3_5": "qwen3_5_text", "qwen3_5_moe": "qwen3_5_moe_text"}


def saved_model_type(cfg: GatedQwen3Config) -> str:
    """The model_type `save_hf` writes: the loaded family's, text-only for a vision-language one."""
    model_type = _ARCHITECTURE_FAMILY[family_of(cfg).architecture]
    return TEXT_ONLY.get(model_type, model_type)


def to_hf(params: dict[str, Tensor], cfg: GatedQwen3Config) -> Iterator[tuple[str, Tensor]]:
    """Our parameters → checkpoint tensors (in the saved family's names). Each row's rearrangements
    are run on the HF tensor's element indices, so saving inverts exactly what loading does; every
    element of every tensor must be written exactly once, or this refuses."""
    family = FAMILIES[saved_model_type(cfg)]
    for hf_name, shape, parts in _rows(cfg, family):
        numel = int(torch.Size(shape).numel())
        index = torch.arange(numel).view(shape)
        first = params[parts[0][0]]
        out = first.new_empty(numel)
        written = torch.zeros(numel, dtype=torch.int32)
        for our_name, expert, rearrange in parts:
            source = params[our_name] if expert is None else params[our_name][expert]
            where = rearrange(index)
            if where.shape != source.shape:
                raise CheckpointError(
                    f"{our_name} has shape {list(source.shape)}, {hf_name} expects {list(where.shape)}"
                )
            out[where.flatten()] = source.flatten()
            written[where.flatten()] += 1
        if not bool((written == 1).all()):  # a table row that does not cover its tensor once: a bug here
            raise CheckpointError(f"saving {hf_name}: the table writes some elements {written.max()} or 0 times")
        yield hf_name, out.view(shape)


def hf_config_for_save(cfg: GatedQwen3Config, dtype_name: str) -> dict[str, Any]:
    """config.json for `cfg` in the saved family: the loaded config's other keys as they were, every
    key gated_interp reads set from `cfg` (so a folded or untied model says so)."""
    model_type = saved_model_type(cfg)
    family = FAMILIES[model_type]
    loaded = cfg.hf_extra.get("config_json")
    hf = dict(text_config(loaded)) if loaded else {}
    hf.pop("torch_dtype", None)
    n = cfg.n_layers
    if family.moe == "all" and cfg.moe_layers != tuple(range(n)):
        raise CheckpointError(
            f"a {model_type} folder has experts on every layer; this model has them on {cfg.moe_layers}"
        )
    if family.moe == "none" and cfg.moe_layers:
        raise CheckpointError(f"a {model_type} folder has no experts; this model has them on {cfg.moe_layers}")
    rope = dict(hf.get("rope_parameters") or {})
    rope.update(rope_type="default", rope_theta=cfg.rope_theta, partial_rotary_factor=cfg.partial_rotary_factor)
    hf.update(
        architectures=[family.architecture],
        model_type=model_type,
        hidden_size=cfg.d_model,
        num_hidden_layers=n,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_key_value_heads,
        head_dim=cfg.d_head,
        vocab_size=cfg.d_vocab,
        max_position_embeddings=cfg.n_ctx,
        rms_norm_eps=cfg.rms_norm_eps,
        rope_parameters=rope,
        tie_word_embeddings=cfg.tie_word_embeddings,
        attention_bias=False,
        hidden_act="silu",
        layer_types=[cfg.layer_type(i) for i in range(n)],
        linear_num_key_heads=cfg.linear_n_key_heads,
        linear_num_value_heads=cfg.linear_n_value_heads,
        linear_key_head_dim=cfg.linear_d_key,
        linear_value_head_dim=cfg.linear_d_value,
        linear_conv_kernel_dim=cfg.linear_conv_kernel,
        dtype=dtype_name,
    )
    hf.pop(UNGATED_KEY, None)
    if cfg.gate == "none":
        hf[UNGATED_KEY] = False
    elif cfg.gate != "elementwise":
        raise CheckpointError(
            f"a {model_type} folder holds an elementwise gate per query head (or, with {UNGATED_KEY}, none); "
            f"this model's gate is {cfg.gate!r}"
        )
    if cfg.d_mlp or family.moe != "all":
        hf["intermediate_size"] = cfg.d_mlp
    if cfg.moe_layers:
        hf.update(
            num_experts=cfg.n_experts,
            num_experts_per_tok=cfg.n_experts_per_token,
            moe_intermediate_size=cfg.d_mlp_expert,
            shared_expert_intermediate_size=cfg.d_mlp_shared,
        )
    if family.moe == "step":
        dense = [i for i in range(n) if i not in cfg.moe_layers]
        hf.update(decoder_sparse_step=1, mlp_only_layers=dense, norm_topk_prob=cfg.norm_topk_prob)
    return hf
