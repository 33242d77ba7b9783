"""The bundled models' card (`README.md`), its training figure and the list of books: what the
card says is in `model_card.md.j2`; this module turns `metrics.json` and `training_log.csv` into
the figures it quotes (formatted numbers, table rows, goal checks, trends in the training log).
A hybrid pair (Qwen3.5 layout) gets its own card, `hybrid_card.py` with `hybrid_card.md.j2`;
`render` picks it from the bundle's train config.

jinja2 renders the template; it is not a dependency of `gated_interp` but comes with torch (and
this folder is not installed)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from gated_interp.analysis import uniform_first_token_attention
from gated_interp.loading.bundled import METRICS_FILE
from gated_interp.plotting import training_curves
from gated_interp.train.trainer import TrainConfig
from maintainer.card_runs import card_command

TEMPLATE = Path(__file__).with_name("model_card.md.j2")
FIGURE_FILE = "training_emergence.png"
# How the card's sample generations are drawn (`model_card.py` draws them, the card states it).
SAMPLING = {"prompt": "Once upon a time there was a little girl who", "max_new_tokens": 60, "temperature": 0.8,
            "top_k": 40, "seed": 0}  # fmt: skip
SEED_FIGURES = ("loss", "first_token_attention_by_layer", "max_abs_resid_by_layer")  # what a card keeps per seed
# The goals set for the bundled models: the paper's contrast, visible at small scale.
SINK_RATIO_GOAL = 3.0  # baseline's first-token attention / each gated variant's, in its strongest layer
RESID_RATIO_GOAL = 5.0  # baseline's max |residual| / gate_headwise's, in every layer


def render(bundle: Path) -> None:
    """Draw `training_emergence.png` and write `README.md` from a bundle's `metrics.json` and
    `training_log.csv`."""
    saved = json.loads((bundle / METRICS_FILE).read_text())
    log = pd.read_csv(bundle / "training_log.csv")
    config = saved["training"]["train_config"]
    n_windows, seq_len = config.get("eval_windows"), config.get("seq_len")
    windows = f"{n_windows} held-out windows" if n_windows else "the run's held-out windows"
    reference = None
    if seq_len:
        windows += f" of {seq_len} tokens"
        reference = (uniform_first_token_attention(seq_len), f"uniform attention over {seq_len} tokens")
    # A hybrid pair (Qwen3.5 layout) has its own card: hybrid_card builds on this module's helpers.
    from maintainer.hybrid_card import hybrid_card_text, is_hybrid, shared_with_paper_bundle

    hybrid = is_hybrid(config)
    models = "tiny hybrid models" if hybrid else "tiny models"
    fig = training_curves(log, windows, reference, title=f"Training curves of the bundled {models}")
    fig.savefig(bundle / FIGURE_FILE, dpi=110)
    plt.close(fig)
    if hybrid:
        text = hybrid_card_text(
            saved["variants"], saved["training"], saved["corpus"], saved.get("seeds"), saved.get("trials"),
            shared_with_paper_bundle(bundle),
        )  # fmt: skip
    else:
        text = card_text(
            saved["variants"], saved["training"], saved["corpus"], log, saved.get("seeds"), saved.get("trials")
        )
    (bundle / "README.md").write_text(text)


def card_text(
    metrics: dict[str, Any],
    summary: dict[str, Any],
    corpus_info: dict[str, Any],
    log: pd.DataFrame | None = None,
    other_seeds: dict[str, dict[str, Any]] | None = None,
    trials: list[dict[str, Any]] | None = None,
) -> str:
    """The card's Markdown. `metrics`: each variant's figures on the held-out windows; `summary`,
    `corpus_info`: `metrics.json`'s `training` and `corpus`; `log`: the training log; `other_seeds`
    maps each further seed of the same recipe to its variants' `SEED_FIGURES` (the card then states
    the seed-to-seed spread); `trials` (`card_runs.trial_summary`) are the runs that chose the recipe."""
    train = TrainConfig.from_dict(summary["train_config"])  # also the old flat layout of metrics.json
    arch, variants = train.model, list(metrics)
    layer = strongest_sink_layer(metrics)
    all_seeds = {str(train.seed): metrics, **(other_seeds or {})}
    context = {
        "books": book_counts(corpus_info.get("books")),
        "corpus": corpus_facts(corpus_info),
        "seq_len": train.seq_len,
        "arch": {
            "vocabulary": f"{arch.d_vocab:,}",  # the tokenizer's size: training sets d_vocab to it
            "n_layers": arch.n_layers,
            "d_model": arch.d_model,
            "n_heads": arch.n_heads,
            "n_key_value_heads": arch.n_key_value_heads,
            "d_head": arch.d_head,
            "d_mlp": arch.d_mlp,
            "qk_norm": "q/k norm" if arch.use_qk_norm else "no q/k norm",
            "rope_theta": f"{arch.rope_theta:g}",
            "embeddings": "tied" if arch.tie_word_embeddings else "untied",
        },
        "train": train_facts(train),
        "run": run_facts(summary, len(variants), arch.device),
        "figure": FIGURE_FILE,
        "n_heldout_windows": metrics[variants[0]]["n_heldout_windows"],
        "headline_rows": [_headline_row(v, metrics[v]) for v in variants],
        "uniform_level": f"{uniform_first_token_attention(train.seq_len):.4f}",
        "layers": list(range(len(metrics[variants[0]]["first_token_attention_by_layer"]))),
        "first_token_attention_rows": _layer_rows(metrics, "first_token_attention_by_layer", "{:.4f}"),
        "max_abs_resid_rows": _layer_rows(metrics, "max_abs_resid_by_layer", "{:.1f}"),
        "contrast": _contrast(metrics, layer, log) if "baseline" in metrics else None,
        "trials": {"rows": [trial_row(t) for t in trials], "note": summary.get("trial_note")} if trials else None,
        "seeds": _seeds(all_seeds, layer) if len(all_seeds) > 1 else None,
        "sampling": SAMPLING,
        "samples": [(v, repr(metrics[v]["sample"].strip())) for v in variants],
    }
    return render_template(TEMPLATE.name, context)


def render_template(name: str, context: dict[str, Any]) -> str:
    """The card template `name` (a file next to this module) rendered with `context`."""
    environment = Environment(
        loader=FileSystemLoader(TEMPLATE.parent),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=StrictUndefined,
        autoescape=False,  # Markdown, not HTML
    )
    return environment.get_template(name).render(context)


def corpus_facts(corpus_info: dict[str, Any]) -> dict[str, str]:
    return {
        "megabytes": f"{corpus_info['train_bytes'] / 1e6:.1f}",
        "windows": f"{corpus_info['training_windows']:,}",
    }


def train_facts(train: TrainConfig) -> dict[str, Any]:
    """The training recipe as the cards state it."""
    return {
        "lr": f"{train.lr:g}",
        "warmup_steps": train.warmup_steps,
        "min_lr_ratio": f"{train.min_lr_ratio:g}",
        "weight_decay": train.weight_decay,
        "betas": tuple(train.betas),
        "batch_size": train.batch_size,
        "grad_clip": train.grad_clip,
        "seed": train.seed,
        "eval_interval": train.eval_interval,
        "eval_windows": train.eval_windows,
    }


def book_counts(books: dict[str, int] | None) -> dict[str, str]:
    """The corpus's book counts (recorded from its `manifest.tsv` when the bundle was written)."""
    if not books:
        return {"total": "an unrecorded number of", "train": "some", "held_out": "some"}
    return {"total": str(books["train"] + books["held_out"]), "train": str(books["train"]),
            "held_out": str(books["held_out"])}  # fmt: skip


def run_facts(summary: dict[str, Any], n_variants: int, device: str) -> dict[str, Any]:
    minutes = f"{summary['wall_time_s'] / 60:.0f} minutes"
    processes = summary.get("processes", 1)
    together = {1: "the one variant", 2: "both together", 3: "all three together"}.get(n_variants, f"all {n_variants}")
    return {
        "tokens_seen": f"{summary['tokens_seen']:,}",
        "tokens_millions": f"{summary['tokens_seen'] / 1e6:.0f}",
        "steps_done": summary["steps_done"],
        "wall_time": f"wall time for {together}: {minutes}"
        if processes == 1
        else f"wall time {minutes}, in {processes} parallel processes,",
        "hardware": summary.get("hardware", "an unrecorded machine"),
        "torch_threads": summary["torch_threads"],
        "device": {"cpu": "on a CPU", "cuda": "on a GPU"}.get(device.split(":")[0], f"on {device}"),
        "train_command": summary.get("command", "python -m gated_interp.train --corpus CORPUS_DIR --out RUN_DIR"),
        "card_command": card_command(summary.get("card_runs", {"run": ["RUN_DIR"]})),
    }


def _headline_row(variant: str, m: dict[str, Any]) -> list[str]:
    gate = f"{m['mean_gate']:.3f}" if "mean_gate" in m else "-"
    loss, attention = f"{m['loss']:.4f}", f"{m['first_token_attention']:.4f}"
    return [variant, loss, attention, f"{m['sink_rate']:.3f}", f"{m['max_abs_resid']:.2f}", gate]


def _layer_rows(metrics: dict[str, Any], key: str, fmt: str) -> list[list[str]]:
    """One row per variant, one cell per (0-based) layer of `key`."""
    return [[variant, *(fmt.format(x) for x in m[key])] for variant, m in metrics.items()]


@dataclass(frozen=True)
class GoalCheck:
    goal: str  # the goal in full
    short: str  # its name in the per-seed list
    met: bool
    figure: str  # the measured figure behind the verdict

    @property
    def verdict(self) -> str:
        return "met" if self.met else "not met"


def goal_checks(metrics: dict[str, Any], layer: int) -> list[GoalCheck]:
    """The goals set for the bundled models, checked on `metrics` (a baseline and gated variants):
    the baseline's first-token attention in its strongest `layer` at least `SINK_RATIO_GOAL` times
    each gated variant's, its max |residual| at least `RESID_RATIO_GOAL` times gate_headwise's in
    every layer, and every gated variant's held-out loss at most the baseline's."""
    base = metrics["baseline"]
    gated = [v for v in metrics if v != "baseline"]
    checks = []
    if gated:
        attention = [metrics[v]["first_token_attention_by_layer"][layer] for v in gated]
        ratio = min(base["first_token_attention_by_layer"][layer] / a for a in attention)
        checks.append(
            GoalCheck(
                f"first-token attention in the baseline's strongest layer (layer {layer}) at least "
                f"{SINK_RATIO_GOAL:g}x each gated variant's in that layer",
                f"first-token attention {SINK_RATIO_GOAL:g}x (layer {layer})",
                ratio >= SINK_RATIO_GOAL,
                f"smallest ratio {ratio:.1f}",
            )
        )
    if "gate_headwise" in metrics:
        pairs = zip(base["max_abs_resid_by_layer"], metrics["gate_headwise"]["max_abs_resid_by_layer"])
        resid = min(b / h for b, h in pairs)
        checks.append(
            GoalCheck(
                f"max |residual| of the baseline at least {RESID_RATIO_GOAL:g}x gate_headwise's in every layer",
                f"max |residual| {RESID_RATIO_GOAL:g}x headwise",
                resid >= RESID_RATIO_GOAL,
                f"smallest ratio {resid:.1f}",
            )
        )
    if gated:
        gaps = ", ".join(f"{v} {metrics[v]['loss'] - base['loss']:+.3f}" for v in gated)
        checks.append(
            GoalCheck(
                "held-out loss of every gated variant at most the baseline's",
                "gated loss at most the baseline's",
                all(metrics[v]["loss"] <= base["loss"] for v in gated),
                f"minus the baseline's: {gaps}",
            )
        )
    return checks


def _contrast(metrics: dict[str, Any], layer: int, log: pd.DataFrame | None) -> dict[str, Any]:
    """The figures of the card's paragraph on the sink contrast and of its goals."""
    base = metrics["baseline"]
    gated = [v for v in metrics if v != "baseline"]
    by_layer = {v: metrics[v]["first_token_attention_by_layer"][layer] for v in metrics}
    resid = []
    for v in gated:
        layer_ratios = [b / g for b, g in zip(base["max_abs_resid_by_layer"], metrics[v]["max_abs_resid_by_layer"])]
        resid.append(f"{min(layer_ratios):.1f}-{max(layer_ratios):.1f}x {v}'s")
    trend = None
    if log is not None:
        t = log_trends(log, layer)
        trend = {
            "direction": "still rising" if t["attn_last"] > t["attn_earlier"] else "no longer rising",
            "attn_earlier": f"{t['attn_earlier']:.4f}",
            "attn_earlier_tokens": f"{t['attn_earlier_tokens'] / 1e6:.1f}",
            "attn_last": f"{t['attn_last']:.4f}",
            "attn_last_tokens": f"{t['attn_last_tokens'] / 1e6:.1f}",
            "resid_peak_is_last": t["resid_peak_is_last"],
            "resid_peak": f"{t['resid_peak']:.1f}",
            "resid_peak_layer": t["resid_peak_layer"],
            "resid_peak_tokens": f"{t['resid_peak_tokens'] / 1e6:.1f}",
            "resid_last": f"{t['resid_last']:.1f}",
        }
    return {
        "layer": layer,
        "attention_ratios": ", ".join(f"{by_layer['baseline'] / by_layer[v]:.1f}x that of {v}" for v in gated),
        "resid_ratios": " and ".join(resid),
        "goals": goal_checks(metrics, layer),
        "trend": trend,
    }


def _bundled_seed_rows(log: pd.DataFrame) -> pd.DataFrame:
    """The rows of the bundled models' run: a log with a `seed` column also holds other seeds'."""
    if "seed" not in log.columns:
        return log
    return log[log["seed"] == log["seed"].iloc[0]]


def log_trends(log: pd.DataFrame, layer: int, variant: str = "baseline") -> dict[str, Any]:
    """What the training log shows for `variant` (the bundled seed) in `layer`: first-token
    attention at the last evaluation and at the last one within the first four fifths of training
    (two neighbouring evaluations are too close to tell a trend from noise), and where max
    |residual| peaked and where it ended (the largest layer)."""
    rows = _bundled_seed_rows(log)
    rows = rows[rows["variant"] == variant].sort_values("step")
    resid_columns = [c for c in rows.columns if c.startswith("max_abs_resid_L")]
    largest = rows[resid_columns].max(axis=1)
    peak = int(largest.to_numpy().argmax())
    peak_layer = int(rows[resid_columns].iloc[peak].to_numpy().argmax())
    attention = rows[f"first_token_attention_L{layer}"]
    earlier = int((rows["tokens"] <= 0.8 * rows["tokens"].iloc[-1]).to_numpy().nonzero()[0][-1])
    return {
        "attn_earlier": float(attention.iloc[earlier]),
        "attn_earlier_tokens": int(rows["tokens"].iloc[earlier]),
        "attn_last": float(attention.iloc[-1]),
        "attn_last_tokens": int(rows["tokens"].iloc[-1]),
        "resid_peak": float(largest.iloc[peak]),
        "resid_peak_layer": peak_layer,
        "resid_peak_tokens": int(rows["tokens"].iloc[peak]),
        "resid_last": float(rows[f"max_abs_resid_L{peak_layer}"].iloc[-1]),
        "resid_peak_is_last": peak == len(rows) - 1,
    }


def _seeds(all_seeds: dict[str, dict[str, Any]], layer: int) -> dict[str, Any]:
    """Every seed's headline figures, the spread between seeds per variant, and the goals per seed."""
    seeds = list(all_seeds)
    variants = list(all_seeds[seeds[0]])
    rows, spreads = [], []
    for v in variants:
        for seed in seeds:
            m = all_seeds[seed][v]
            attention = " / ".join(f"{x:.3f}" for x in m["first_token_attention_by_layer"])
            resid = " / ".join(f"{x:.1f}" for x in m["max_abs_resid_by_layer"])
            rows.append([v, seed, f"{m['loss']:.4f}", attention, resid])
    for v in variants:
        loss = [all_seeds[s][v]["loss"] for s in seeds]
        attn = [all_seeds[s][v]["first_token_attention_by_layer"][layer] for s in seeds]
        resid_max = [max(all_seeds[s][v]["max_abs_resid_by_layer"]) for s in seeds]
        spreads.append(
            {
                "variant": v,
                "loss": f"{max(loss) - min(loss):.4f}",
                "attention": f"{max(attn) - min(attn):.4f}",
                "resid": f"{max(resid_max) - min(resid_max):.2f}",
            }
        )
    goals = []
    if "baseline" in variants:
        goals = [(seed, goal_checks(all_seeds[seed], strongest_sink_layer(all_seeds[seed]))) for seed in seeds]
    n_layers = len(all_seeds[seeds[0]][variants[0]]["first_token_attention_by_layer"])
    return {
        "names": seeds,
        "layers": " / ".join(str(i) for i in range(n_layers)),
        "layer": layer,
        "rows": rows,
        "spreads": spreads,
        "goals": goals,
    }


def trial_row(t: dict[str, Any]) -> list[str]:
    attention = t["first_token_attention_by_layer"]  # None on a hybrid's linear-attention layers
    layer = max((i for i, a in enumerate(attention) if a is not None), key=attention.__getitem__)
    planned = t.get("planned_tokens", t["tokens"])
    tokens = f"{t['tokens']:,}" if t["tokens"] >= planned else f"{t['tokens']:,} (stopped; {planned:,} planned)"
    return [
        t["run"], t["variant"], str(t["seq_len"]), str(t.get("batch_size", "-")), f"{t['lr']:g}",
        f"{t['weight_decay']:g}", "yes" if t.get("qk_norm", True) else "no", tokens, f"{t['loss']:.3f}",
        f"{attention[layer]:.4f} ({layer})", f"{uniform_first_token_attention(t['seq_len']):.4f}",
        f"{t['max_abs_resid']:.1f}",
    ]  # fmt: skip


def strongest_sink_layer(metrics: dict[str, Any]) -> int:
    """The (0-based) layer where the baseline's first-token attention is largest; 0 without a baseline."""
    if "baseline" not in metrics:
        return 0
    by_layer = metrics["baseline"]["first_token_attention_by_layer"]
    return max(range(len(by_layer)), key=by_layer.__getitem__)


def write_corpus_list(manifest: Path, out: Path) -> dict[str, int]:
    """`CORPUS.md`: the books of the corpus (title, author, Project Gutenberg number, split) from
    the corpus folder's `manifest.tsv`, with the licence line; the text itself is not copied.
    Returns the book counts (`train`, `held_out`) that the card states."""
    books = pd.read_csv(manifest, sep="\t", dtype=str, keep_default_na=False)
    counts = {"train": int((books["split"] == "train").sum()), "held_out": int((books["split"] != "train").sum())}
    lines = [
        "# The books the bundled tiny models were trained on",
        "",
        f"{len(books)} public-domain children's books from Project Gutenberg, as picked from the GitHub",
        "repository `rcdm-uga/Gutenberg_Text` (commit a0b16d35a9851168ce9ac649851c17b7ab08d48e) and",
        f"de-duplicated: {counts['train']} for training (`train.txt`), {counts['held_out']} held out (`valid.txt`).",
        "",
        "**Licence:** all texts are in the public domain in the United States (every work was first",
        "published before 1927). Project Gutenberg's headers, footers, licence text and producer credits",
        "were removed, so the Project Gutenberg License and trademark terms do not apply to the text",
        "used; readers outside the US should check individual titles under local law. The corpus text",
        "is not part of this package. The texts are of their time and contain dated and offensive",
        "racial and ethnic language; paragraphs with racial slurs were removed before training.",
        "",
        "| split | title | author | Project Gutenberg ebook no. |",
        "|---|---|---|---|",
    ]
    for book in books.itertuples():
        title = str(book.title).replace("|", "\\|")
        lines.append(
            f"| {book.split} | {title} | {book.author} | [{book.gutenberg_ebook_no}]"
            f"(https://www.gutenberg.org/ebooks/{book.gutenberg_ebook_no}) |"
        )
    (out / "CORPUS.md").write_text("\n".join(lines) + "\n")
    return counts
