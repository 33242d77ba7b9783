"""What a checkpoint folder is, without building the model: `describe_checkpoint`.

Reads config.json and the weight files' headers through the same code as `load_hooked`
(`hf_config`, `weight_files`), then scans each tensor once, one at a time, for NaN/Inf values.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import torch

from gated_interp.config import GatedQwen3Config, variant_of
from gated_interp.loading import hybrid
from gated_interp.loading.hf_config import config_from_hf, gate_kind, read_config_json
from gated_interp.loading.load import TOKENIZER_FILES
from gated_interp.loading.state_dict import IGNORED_SUFFIXES
from gated_interp.loading.weight_files import FLOAT_DTYPES, WeightFiles


def describe_checkpoint(folder: Path, variant: str | None = None) -> list[tuple[str, str]]:
    """(label, value) rows: architecture, gate, q_proj layout, sizes, files, dtypes, non-finite
    tensors and tokenizer. `variant` is the name the user gave, if any."""
    folder = Path(folder)
    hf = read_config_json(folder)
    files = WeightFiles(folder)
    is_hybrid = hf.get("model_type") in hybrid.FAMILIES  # Qwen3.5 / Qwen3-Next: read as load_hooked reads them
    names = {n for n in files.names() if not n.endswith(IGNORED_SUFFIXES) and not (is_hybrid and hybrid.ignored(n))}
    tied = "lm_head.weight" not in names
    cfg = (
        hybrid.config_from_hybrid_hf(
            hf, tie_word_embeddings_default=tied, dtype=torch.float32, device="cpu", model_name=folder.name
        )
        if is_hybrid
        else config_from_hf(hf, tie_word_embeddings_default=tied, device="cpu")
    )
    on_disk = sum(math.prod(files.shape(n)) for n in names)
    tokenizer = [f for f in TOKENIZER_FILES if (folder / f).is_file()]
    return [
        ("folder", str(folder)),
        ("model_type", str(hf.get("model_type"))),
        (
            "variant",
            variant or (f"hybrid ({hf['model_type']})" if is_hybrid else variant_of(gate_kind(hf)) + " (from config)"),
        ),
        ("gate", gate_text(cfg)),
        ("layers", str(cfg.n_layers)),
        ("layer types", layer_types_text(cfg)),
        ("d_model", str(cfg.d_model)),
        ("heads / kv heads", f"{cfg.n_heads} / {cfg.n_key_value_heads} ({cfg.n_groups} query heads per kv head)"),
        ("d_head", str(cfg.d_head)),
        ("d_mlp", str(cfg.d_mlp)),
        ("vocab", str(cfg.d_vocab)),
        ("qk norm", _yes(cfg.use_qk_norm)),
        ("qkv bias", _yes(cfg.qkv_bias)),
        ("tied embeddings", _yes(cfg.tie_word_embeddings)),
        ("rope theta", f"{cfg.rope_theta:g}" + (f", scaling {cfg.rope_scaling}" if cfg.rope_scaling else "")),
        ("q_proj layout", qproj_layout_text(cfg)),
        ("parameters", f"{_count(cfg.n_params)} (weight matrices and embeddings, from the config)"),
        ("on disk", f"{_count(on_disk)} values in {len(names)} tensors"),
        ("weight files", ", ".join(f"{f.name} ({f.stat().st_size / 2**20:.1f} MiB)" for f in files.files)),
        ("dtype on disk", _dtypes_text(files, names)),
        ("non-finite tensors", non_finite_text(files, names)),
        ("tokenizer", f"yes ({', '.join(tokenizer)})" if tokenizer else "no (the model takes token ids only)"),
    ]


def layer_types_text(cfg: GatedQwen3Config) -> str:
    """Which layers are full attention and which Gated DeltaNet (0-based)."""
    full, linear = list(cfg.full_attention_layers), list(cfg.linear_attention_layers)
    if not linear:
        return "full_attention on every layer"
    return f"full_attention on layers {full}; linear_attention (Gated DeltaNet) on layers {linear}"


def gate_text(cfg: GatedQwen3Config) -> str:
    if not cfg.is_gated:
        return "none (plain softmax attention)"
    return f"{cfg.gate}: sigmoid gate on the attention output, {cfg.gate_width} score(s) per head"


def qproj_layout_text(cfg: GatedQwen3Config) -> str:
    """e.g. "per kv group: 2 heads x 64 query rows + 2 x 1 gate rows; 8 groups, 2048 rows"."""
    if cfg.is_gated and cfg.gate_layout == "per_head":  # Qwen3.5 / Qwen3-Next: each query head, then its gate
        return (
            f"per query head: {cfg.d_head} query rows + {cfg.gate_width} gate rows; {cfg.d_q_proj} rows x {cfg.d_model}"
        )
    layout = f"per kv group: {cfg.n_groups} heads x {cfg.d_head} query rows"
    if cfg.is_gated:
        layout += f" + {cfg.n_groups} x {cfg.gate_width} gate rows"
    return f"{layout}; {cfg.n_key_value_heads} groups, {cfg.d_q_proj} rows x {cfg.d_model}"


def non_finite_tensors(files: WeightFiles, names: set[str]) -> list[str]:
    """Floating-point tensors holding NaN or Inf, read one at a time."""
    return [
        name
        for name in sorted(names)
        if files.dtype(name) in FLOAT_DTYPES and not bool(torch.isfinite(files.get(name)).all())
    ]


def non_finite_text(files: WeightFiles, names: set[str]) -> str:
    bad = non_finite_tensors(files, names)
    if not bad:
        return "none (no NaN or Inf)"
    return f"{len(bad)} hold NaN or Inf: " + ", ".join(bad[:6]) + (" ..." if len(bad) > 6 else "")


def _dtypes_text(files: WeightFiles, names: set[str]) -> str:
    counts = Counter(files.dtype(name) for name in names)
    return ", ".join(f"{dtype} ({n} tensors)" for dtype, n in counts.most_common())


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _count(n: int) -> str:
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.2f}{suffix} ({n:,})"
    return str(n)
