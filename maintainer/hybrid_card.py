"""The card of a hybrid pair in Qwen3.5's layout (`python -m gated_interp.train --layout qwen3_5`):
Gated DeltaNet layers ("linear_attention") with a full-attention layer after every three,
`hybrid_gated` (sigmoid output gate on the full-attention layers) beside `hybrid_ungated`.

This module turns the bundle's `metrics.json` into the figures `hybrid_card.md.j2` quotes; the
words are in the template, and what the card shares with the paper's (data, recipe, run facts,
sampling) comes from `card_text`. A quantity a layer does not have is None in `metrics.json`
(a DeltaNet layer has no attention pattern over keys, so no first-token attention and no output
gate); the card shows "-" there. The contrast is stated in whichever direction the numbers go.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gated_interp.analysis import uniform_first_token_attention
from gated_interp.loading.bundled import METRICS_FILE, TINY_DIR
from gated_interp.loading.hybrid import UNGATED_KEY, family_of, saved_model_type
from gated_interp.train.trainer import HYBRID_VARIANT_GATES, TrainConfig
from maintainer.card_runs import train_commands
from maintainer.card_text import (
    FIGURE_FILE,
    SAMPLING,
    book_counts,
    corpus_facts,
    render_template,
    run_facts,
    train_facts,
    trial_row,
)

GATED, UNGATED = "hybrid_gated", "hybrid_ungated"
HYBRID_TEMPLATE = "hybrid_card.md.j2"
LAYER_TYPE_NAMES = {"full_attention": "full attention", "linear_attention": "Gated DeltaNet"}


def is_hybrid(train_config: dict[str, Any]) -> bool:
    """Whether a run's recorded train config is the hybrid layout (its model names layer types)."""
    return bool(train_config.get("model", {}).get("layer_types"))


def shared_with_paper_bundle(bundle: Path, paper_bundle: Path = TINY_DIR) -> dict[str, bool]:
    """Whether the hybrid `bundle` was trained on the same books (same training bytes and book
    counts) and with the same tokenizer (identical `tokenizer.json`) as the paper-layout tiny
    models in `paper_bundle`; False where either bundle lacks the file to tell."""
    try:
        ours, theirs = (json.loads((b / METRICS_FILE).read_text()) for b in (bundle, paper_bundle))
        tokenizers = [(b / next(iter(m["variants"])) / "tokenizer.json").read_bytes() for b, m in
                      ((bundle, ours), (paper_bundle, theirs))]  # fmt: skip
    except (FileNotFoundError, StopIteration):
        return {"books": False, "tokenizer": False}
    keys = ("train_bytes", "books")
    same_books = all(ours["corpus"].get(k) == theirs["corpus"].get(k) for k in keys) and "books" in ours["corpus"]
    return {"books": same_books, "tokenizer": tokenizers[0] == tokenizers[1]}


def hybrid_card_text(
    metrics: dict[str, Any],
    summary: dict[str, Any],
    corpus_info: dict[str, Any],
    other_seeds: dict[str, dict[str, Any]] | None = None,
    trials: list[dict[str, Any]] | None = None,
    shared: dict[str, bool] | None = None,
) -> str:
    """The hybrid card's Markdown from `metrics.json`'s `variants`, `training`, `corpus`, `seeds`
    and `trials` (as `card_text.card_text` takes them); `shared`: what the pair shares with the
    paper-layout tiny models (`shared_with_paper_bundle`)."""
    train = TrainConfig.from_dict(summary["train_config"])
    arch, variants = train.model, list(metrics)
    layer_types = list(metrics[variants[0]].get("layer_types", arch.layer_types))
    full_layers = [i for i, kind in enumerate(layer_types) if kind == "full_attention"]
    uniform = uniform_first_token_attention(train.seq_len)
    all_seeds = {str(train.seed): metrics, **(other_seeds or {})}
    context = {
        "books": book_counts(corpus_info.get("books")),
        "shared": shared or {"books": False, "tokenizer": False},
        "corpus": corpus_facts(corpus_info),
        "seq_len": train.seq_len,
        "arch": _architecture(arch, layer_types),
        "stored": {
            "model_type": saved_model_type(arch),
            "architecture": family_of(arch).architecture,
            "dtype": train.save_dtype,
            "ungated_key": UNGATED_KEY,
        },
        "gated_gate": HYBRID_VARIANT_GATES[GATED],
        "train": train_facts(train),
        "run": {
            **run_facts(summary, len(variants), arch.device),
            "train_commands": train_commands(summary, variants),
        },
        "figure": FIGURE_FILE,
        "n_heldout_windows": metrics[variants[0]]["n_heldout_windows"],
        "full_layers": ", ".join(str(i) for i in full_layers),
        "full_layers_named": ("layer " if len(full_layers) == 1 else "layers ") + ", ".join(map(str, full_layers)),
        "layer_header": " | ".join(f"layer {i} ({LAYER_TYPE_NAMES.get(t, t)})" for i, t in enumerate(layer_types)),
        "n_layers": len(layer_types),
        "headline_rows": [_headline_row(v, metrics[v]) for v in variants],
        "first_token_attention_rows": [
            [v, *_cells(metrics[v]["first_token_attention_by_layer"], "{:.4f}")] for v in variants
        ],
        "max_abs_resid_rows": [[v, *_cells(metrics[v]["max_abs_resid_by_layer"], "{:.1f}")] for v in variants],
        "uniform_level": f"{uniform:.4f}",
        "contrast": contrast(metrics, full_layers, uniform) if {GATED, UNGATED} <= set(metrics) else None,
        "trials": {"rows": [trial_row(t) for t in trials], "note": summary.get("trial_note")} if trials else None,
        "seeds": _seeds(all_seeds, full_layers) if len(all_seeds) > 1 else None,
        "sampling": SAMPLING,
        "samples": [(v, repr(metrics[v]["sample"].strip())) for v in variants],
    }
    return render_template(HYBRID_TEMPLATE, context)


def _architecture(arch: Any, layer_types: list[str]) -> dict[str, Any]:
    return {
        "n_layers": arch.n_layers,
        "layer_types": ", ".join(LAYER_TYPE_NAMES.get(t, t) for t in layer_types),
        "vocabulary": f"{arch.d_vocab:,}",  # the tokenizer's size: training sets d_vocab to it
        "d_model": arch.d_model,
        "n_heads": arch.n_heads,
        "n_key_value_heads": arch.n_key_value_heads,
        "d_head": arch.d_head,
        "rotary_dim": arch.rotary_dim,
        "partial_rotary_factor": f"{arch.partial_rotary_factor:g}",
        "rope_theta": f"{arch.rope_theta:g}",
        "qk_norm": "per-head q/k norm" if arch.use_qk_norm else "no q/k norm",
        "linear_n_key_heads": arch.linear_n_key_heads,
        "linear_n_value_heads": arch.linear_n_value_heads,
        "linear_d_key": arch.linear_d_key,
        "linear_d_value": arch.linear_d_value,
        "linear_conv_kernel": arch.linear_conv_kernel,
        "norms": "RMSNorm multiplying by 1 + w" if arch.zero_centred_norms else "RMSNorm",
        "d_mlp": arch.d_mlp,
        "embeddings": "tied" if arch.tie_word_embeddings else "untied",
    }


def _cells(values: list[float | None], fmt: str) -> list[str]:
    """Formatted per-layer values, "-" where a layer has none (None in metrics.json)."""
    return ["-" if x is None else fmt.format(x) for x in values]


def _headline_row(variant: str, m: dict[str, Any]) -> list[str]:
    gate = f"{m['mean_gate']:.3f}" if m.get("mean_gate") is not None else "-"
    return [
        variant, f"{m['loss']:.4f}", f"{m['first_token_attention']:.4f}", f"{m['sink_rate']:.3f}",
        f"{m['max_abs_resid']:.2f}", gate,
    ]  # fmt: skip


def _compared(ungated: float, gated: float) -> dict[str, Any]:
    """How a gated figure compares with the ungated one: which is larger, by what factor."""
    direction = "lower" if gated < ungated else "higher" if gated > ungated else "equal"
    larger, smaller = max(ungated, gated), min(ungated, gated)
    return {
        "ungated": ungated,
        "gated": gated,
        "direction": direction,
        "factor": _factor(larger / smaller) if smaller > 0 else "inf",
    }


def _factor(ratio: float) -> str:
    """A ratio with the digits that tell it from 1 (1.004x, not 1.00x)."""
    return f"{ratio:.3f}" if abs(ratio - 1) < 0.1 else f"{ratio:.2f}"


def contrast(metrics: dict[str, Any], full_layers: list[int], uniform: float) -> dict[str, Any]:
    """The pair compared on the held-out windows: first-token attention on each full-attention
    layer (and against the uniform level), max |residual| ungated / gated in every layer, and
    the loss difference gated minus ungated."""
    gated, ungated = metrics[GATED], metrics[UNGATED]
    attention = []
    for layer in full_layers:
        a_u, a_g = ungated["first_token_attention_by_layer"][layer], gated["first_token_attention_by_layer"][layer]
        attention.append(
            {
                "layer": layer,
                **_compared(a_u, a_g),
                "ungated_text": f"{a_u:.4f}",
                "gated_text": f"{a_g:.4f}",
                "versus_uniform": [(v, _factor(a / uniform), a > uniform) for v, a in ((UNGATED, a_u), (GATED, a_g))],
            }
        )
    ratios = [u / g for u, g in zip(ungated["max_abs_resid_by_layer"], gated["max_abs_resid_by_layer"])]
    resid = {
        "low": _factor(min(ratios)),
        "high": _factor(max(ratios)),
        "ungated_larger_everywhere": min(ratios) > 1,
        "ungated_smaller_everywhere": max(ratios) < 1,
        "per_layer": ", ".join(f"layer {i} {_factor(r)}x" for i, r in enumerate(ratios)),
    }
    loss_difference = gated["loss"] - ungated["loss"]
    return {
        "attention": attention,
        "resid": resid,
        "loss_difference": f"{loss_difference:+.4f}",
        "loss_direction": "lower" if loss_difference < 0 else "higher" if loss_difference > 0 else "equal",
    }


def _seeds(all_seeds: dict[str, dict[str, Any]], full_layers: list[int]) -> dict[str, Any]:
    """Every seed's figures per layer, the spread between seeds per variant, and per seed which
    way the gate moved first-token attention on the full-attention layers."""
    seeds = list(all_seeds)
    variants = list(all_seeds[seeds[0]])
    rows, spreads = [], []
    for v in variants:
        for seed in seeds:
            m = all_seeds[seed][v]
            attention = " / ".join(_cells(m["first_token_attention_by_layer"], "{:.3f}"))
            resid = " / ".join(_cells(m["max_abs_resid_by_layer"], "{:.1f}"))
            rows.append([v, seed, f"{m['loss']:.4f}", attention, resid])
    for v in variants:
        loss = [all_seeds[s][v]["loss"] for s in seeds]
        resid_max = [max(all_seeds[s][v]["max_abs_resid_by_layer"]) for s in seeds]
        attention = []
        for layer in full_layers:
            values = [all_seeds[s][v]["first_token_attention_by_layer"][layer] for s in seeds]
            attention.append((layer, f"{max(values) - min(values):.4f}"))
        spreads.append(
            {
                "variant": v,
                "loss": f"{max(loss) - min(loss):.4f}",
                "attention": attention,
                "resid": f"{max(resid_max) - min(resid_max):.2f}",
            }
        )
    per_seed = []
    if {GATED, UNGATED} <= set(variants):
        for seed in seeds:
            by_variant = {v: all_seeds[seed][v]["first_token_attention_by_layer"] for v in (GATED, UNGATED)}
            per_seed.append(
                (
                    seed,
                    [(layer, _compared(by_variant[UNGATED][layer], by_variant[GATED][layer])) for layer in full_layers],
                )
            )
    n_layers = len(all_seeds[seeds[0]][variants[0]]["max_abs_resid_by_layer"])
    return {
        "names": seeds,
        "layers": " / ".join(str(i) for i in range(n_layers)),
        "rows": rows,
        "spreads": spreads,
        "per_seed": per_seed,
    }
