"""config.json of the released checkpoints ↔ `GatedQwen3Config`.

The released config is a Qwen3 (or Qwen2) config plus four keys: `headwise_attn_output_gate`,
`elementwise_attn_output_gate`, `use_qk_norm` and `qkv_bias`. It is read as JSON only: `auto_map`
and any Python files next to it are never imported.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from gated_interp.config import GatedQwen3Config, rms_norm_eps_problem
from gated_interp.loading.errors import CheckpointError

SUPPORTED_MODEL_TYPES = ("qwen3", "qwen2")


def read_config_json(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(
            f"{folder} has no config.json: point at a checkpoint folder in the released Hugging Face "
            "format (config.json plus *.safetensors or pytorch_model.bin)"
        )
    try:
        hf = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(hf, dict):
        raise CheckpointError(f"{path} holds a JSON {type(hf).__name__}, not an object of config keys")
    return hf


# Hugging Face's Qwen3Config / Qwen2Config default when config.json has no rope_theta
# (`RotaryEmbeddingConfigMixin.default_theta`): the same value, so the model equals HF's.
HF_DEFAULT_ROPE_THETA = 10_000.0
# The keys we interpret, by the check `validate_hf_config` makes of each.
_POSITIVE_INTS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "intermediate_size",
    "vocab_size",
    "max_position_embeddings",
)
_FLAGS = (
    "headwise_attn_output_gate",
    "elementwise_attn_output_gate",
    "use_qk_norm",
    "qkv_bias",
    "attention_bias",
    "tie_word_embeddings",
)
_POSITIVE_NUMBERS = ("rms_norm_eps", "rope_theta")
_ROPE_OBJECTS = ("rope_scaling", "rope_parameters")
# Interpreted without a type check: model_type is checked against SUPPORTED_MODEL_TYPES,
# hf_config_from writes its own architectures and torch_dtype, and auto_map (the authors' code,
# never imported) is not carried.
_UNCHECKED = ("model_type", "architectures", "torch_dtype", "dtype", "auto_map")
# Everything not interpreted is carried in cfg.hf_extra and written back.
_INTERPRETED = frozenset(_POSITIVE_INTS + _FLAGS + _POSITIVE_NUMBERS + _ROPE_OBJECTS + _UNCHECKED)


def _bad(key: str, value: Any, wanted: str) -> CheckpointError:
    return CheckpointError(f"config.json: {key} must be {wanted}, got {value!r}; fix config.json")


def _positive_number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise _bad(key, value, "a finite number > 0")
    return float(value)


def validate_hf_config(hf: dict[str, Any]) -> None:
    """Types and ranges of the keys we interpret; a value that is null counts as absent."""
    for key in _POSITIVE_INTS:
        value = hf.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise _bad(key, value, "a whole number >= 1")
    for key in _FLAGS:
        value = hf.get(key)
        if value is not None and not isinstance(value, bool):
            raise _bad(key, value, "true or false")
    for key in _POSITIVE_NUMBERS:
        if hf.get(key) is not None:
            _positive_number(key, hf[key])
    # The config's own rule (rms_norm_eps_problem), named as a config.json fault.
    if hf.get("rms_norm_eps") is not None and (problem := rms_norm_eps_problem(hf["rms_norm_eps"])) is not None:
        raise _bad("rms_norm_eps", hf["rms_norm_eps"], problem)
    for key in _ROPE_OBJECTS:
        value = hf.get(key)
        if value is not None and not isinstance(value, dict):
            raise _bad(key, value, 'an object such as {"rope_type": "linear", "factor": 2.0} or null')
        if value is not None:
            for inner in ("factor", "rope_theta"):
                if value.get(inner) is not None:
                    _positive_number(f"{key}.{inner}", value[inner])


def gate_kind(hf: dict[str, Any]) -> str:
    headwise = bool(hf.get("headwise_attn_output_gate", False))
    elementwise = bool(hf.get("elementwise_attn_output_gate", False))
    if headwise and elementwise:
        raise CheckpointError(
            "config.json sets both headwise_attn_output_gate and elementwise_attn_output_gate; "
            "a checkpoint has one gate kind: set at most one of them to true"
        )
    return "headwise" if headwise else "elementwise" if elementwise else "none"


def _required(hf: dict[str, Any], key: str) -> Any:
    if hf.get(key) is None:
        raise CheckpointError(f"config.json lacks {key!r}, which a Qwen3 config must have")
    return hf[key]


def config_from_hf(
    hf: dict[str, Any],
    *,
    tie_word_embeddings_default: bool = False,
    dtype: torch.dtype = torch.float32,
    device: str | None = None,
    model_name: str = "gated-qwen3",
) -> GatedQwen3Config:
    """`tie_word_embeddings_default` is used when config.json does not say (the caller knows
    whether the weights carry an `lm_head.weight`)."""
    if not isinstance(hf, dict):
        raise CheckpointError(f"config.json must hold a JSON object of config keys, not a {type(hf).__name__}")
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(
            f"config.json has model_type {model_type!r}; gated_interp reads {SUPPORTED_MODEL_TYPES} "
            "checkpoints in the gated-attention release format"
        )
    validate_hf_config(hf)
    rope_parameters = hf.get("rope_parameters") or {}
    rope_theta = hf.get("rope_theta") or rope_parameters.get("rope_theta") or HF_DEFAULT_ROPE_THETA
    rope_scaling = hf.get("rope_scaling")
    if rope_scaling is None and rope_parameters.get("rope_type", "default") != "default":
        rope_scaling = {k: v for k, v in rope_parameters.items() if k != "rope_theta"}
    n_heads = _required(hf, "num_attention_heads")
    d_model = _required(hf, "hidden_size")
    n_kv = hf.get("num_key_value_heads") or n_heads
    if hf.get("head_dim") is None and d_model % n_heads:
        raise CheckpointError(
            f"config.json has no head_dim and hidden_size {d_model} is not a multiple of num_attention_heads "
            f"{n_heads}: add head_dim"
        )
    if n_heads % n_kv:
        raise CheckpointError(
            f"config.json: num_attention_heads ({n_heads}) must be a multiple of num_key_value_heads ({n_kv})"
        )
    try:
        return GatedQwen3Config(
            d_model=d_model,
            n_layers=_required(hf, "num_hidden_layers"),
            n_heads=n_heads,
            n_key_value_heads=n_kv,
            d_head=hf.get("head_dim") or d_model // n_heads,
            d_mlp=_required(hf, "intermediate_size"),
            d_vocab=_required(hf, "vocab_size"),
            n_ctx=hf.get("max_position_embeddings") or 2048,
            gate=gate_kind(hf),
            use_qk_norm=_flag(hf, "use_qk_norm", True),
            qkv_bias=_flag(hf, "qkv_bias", _flag(hf, "attention_bias", False)),
            tie_word_embeddings=_flag(hf, "tie_word_embeddings", tie_word_embeddings_default),
            rms_norm_eps=float(hf.get("rms_norm_eps") or 1e-6),
            rope_theta=float(rope_theta),
            rope_scaling=rope_scaling,
            model_name=model_name,
            dtype=dtype,
            device=device,
            hf_extra={k: v for k, v in hf.items() if k not in _INTERPRETED},
        )
    except (ValueError, NotImplementedError) as error:
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(f"config.json describes a model gated_interp cannot build: {error}") from None


def _flag(hf: dict[str, Any], key: str, default: bool) -> bool:
    value = hf.get(key)
    return default if value is None else value


def hf_config_from(cfg: GatedQwen3Config, torch_dtype: str = "bfloat16") -> dict[str, Any]:
    """The config.json the authors' code reads: a Qwen3 config plus the gate/bias/norm flags."""
    hf = dict(cfg.hf_extra)
    hf.update(
        {
            "architectures": ["Qwen3ForCausalLM"],
            "model_type": "qwen3",
            "hidden_size": cfg.d_model,
            "num_hidden_layers": cfg.n_layers,
            "num_attention_heads": cfg.n_heads,
            "num_key_value_heads": cfg.n_key_value_heads,
            "head_dim": cfg.d_head,
            "intermediate_size": cfg.d_mlp,
            "vocab_size": cfg.d_vocab,
            "max_position_embeddings": cfg.n_ctx,
            "rms_norm_eps": cfg.rms_norm_eps,
            "rope_theta": cfg.rope_theta,
            "rope_scaling": cfg.rope_scaling,
            "tie_word_embeddings": cfg.tie_word_embeddings,
            "hidden_act": "silu",
            "attention_bias": cfg.qkv_bias,
            "headwise_attn_output_gate": cfg.gate == "headwise",
            "elementwise_attn_output_gate": cfg.gate == "elementwise",
            "use_qk_norm": cfg.use_qk_norm,
            "qkv_bias": cfg.qkv_bias,
            "torch_dtype": torch_dtype,
        }
    )
    return hf
