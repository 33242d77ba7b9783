"""`python -m gated_interp.train.card`: measure trained variants and write the bundle + model card.

    python -m gated_interp.train.card --run runs/tiny --corpus CORPUS_DIR --out OUT_DIR
    python -m gated_interp.train.card --run runs/a runs/b --corpus CORPUS_DIR --out OUT_DIR  # one process per variant
    python -m gated_interp.train.card --from-bundle gated_interp/checkpoints/tiny   # re-render text + plot
    python -m gated_interp.train.card --from-bundle BUNDLE --seed-run runs/s1_a runs/s1_b  # add a seed

Copies each variant's checkpoint from the training run, fixes the held-out windows the card is
measured on (shipped as `heldout_tokens.safetensors`), measures every variant on them through the
same `load_hooked` path users take (so the card's figures are those of the bf16 files shipped), and
writes `metrics.json`, `training_log.csv`, `training_emergence.png`, `CORPUS.md` (the books, from
the corpus folder's `manifest.tsv`) and `README.md` (the card). `--from-bundle` re-renders the
card and the plot from a bundle's `metrics.json` and `training_log.csv` without measuring again;
with `--seed-run` or `--trial-run` it first records runs made after the bundle (other seeds of its
recipe are measured on its own held-out windows).
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from gated_interp.analysis.sinks import uniform_first_token_attention  # noqa: E402
from gated_interp.analysis.streaming import measure as measure_model  # noqa: E402
from gated_interp.loading import load_hooked  # noqa: E402
from gated_interp.loading.bundled import HELDOUT_FILE, METRICS_FILE  # noqa: E402
from gated_interp.plotting import variant_style  # noqa: E402
from gated_interp.train.data import evaluation_windows  # noqa: E402
from gated_interp.train.trainer import CONFIG_FILE, VARIANT_GATES, TrainConfig  # noqa: E402

CHECKPOINT_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
STORY_PROMPT = "Once upon a time there was a little girl who"


def measure(model, tokens: torch.Tensor, batch_size: int = 16) -> dict[str, Any]:
    """Held-out loss and the sink / activation / gate figures over all windows: the one
    measurement loop (`analysis.streaming.measure`), under the names it gives each quantity."""
    return measure_model(model, tokens, batch_size=batch_size, progress=False).as_dict()


def _layers(log: pd.DataFrame) -> list[int]:
    return sorted(int(c.rsplit("_L", 1)[1]) for c in log.columns if c.startswith("first_token_attention_L"))


def _bundled_seed_rows(log: pd.DataFrame) -> pd.DataFrame:
    """The rows of the bundled models' run: a log with a `seed` column also holds other seeds'."""
    if "seed" not in log.columns:
        return log
    return log[log["seed"] == log["seed"].iloc[0]]


def emergence_figure(log: pd.DataFrame, n_windows: int | None = None, seq_len: int | None = None) -> plt.Figure:
    """Training curves per variant and layer (0-based): first-token attention (top row, with the
    level of a uniform head over `seq_len` tokens dashed) and max |residual| after the block
    (bottom row); the right column holds each gated variant's held-out loss minus the baseline's
    (the loss curves lie within a few hundredths of a nat, so their difference is what can be
    read). The bundled seed is drawn solid; other seeds in the log (a `seed` column) thin."""
    layers = _layers(log)
    fig, axes = plt.subplots(
        2, len(layers) + 1, figsize=(3.3 * (len(layers) + 1), 6.4), sharex=True, squeeze=False, layout="constrained"
    )
    for row in (0, 1):
        for ax in axes[row, 1 : len(layers)]:
            ax.sharey(axes[row, 0])
    ax_loss, ax_legend = axes[0, -1], axes[1, -1]
    seeds = list(dict.fromkeys(log["seed"])) if "seed" in log.columns else [None]
    for seed_index, seed in enumerate(seeds):
        rows_of_seed = log if seed is None else log[log["seed"] == seed]
        bundled = seed_index == 0
        line = {
            "marker": "." if bundled else None,
            "linewidth": 1.6 if bundled else 0.9,
            "alpha": 1.0 if bundled else 0.55,
        }
        has_baseline = "baseline" in set(rows_of_seed["variant"])
        base = (
            rows_of_seed[rows_of_seed["variant"] == "baseline"].set_index("step")["val_loss"] if has_baseline else None
        )
        for index, (variant, rows) in enumerate(rows_of_seed.groupby("variant", sort=False)):
            style = variant_style(str(variant), index)
            label = (f"{variant}" if seed is None else f"{variant}, seed {seed}") if bundled else f"seed {seed}"
            label = label if bundled or index == 0 else None
            tokens = rows["tokens"] / 1e6
            for column, layer in enumerate(layers):
                axes[0, column].plot(tokens, rows[f"first_token_attention_L{layer}"], label=label, **style, **line)
                axes[1, column].plot(tokens, rows[f"max_abs_resid_L{layer}"], **style, **line)
            if base is not None:  # only at steps the baseline was evaluated too (a resumed run may add one)
                losses = rows.set_index("step")
                shared = losses.index.intersection(base.index)
                difference = losses.loc[shared, "val_loss"] - base.loc[shared]
                ax_loss.plot(losses.loc[shared, "tokens"] / 1e6, difference.to_numpy(), **style, **line)
    if seq_len is not None:
        for ax in axes[0, : len(layers)]:
            ax.axhline(
                uniform_first_token_attention(seq_len), color="0.4", linestyle="--", linewidth=1,
                label=f"uniform attention over {seq_len} tokens",
            )  # fmt: skip
    for column, layer in enumerate(layers):
        axes[0, column].set_title(f"First-token attention, layer {layer}")
        axes[1, column].set_title(f"Max |residual| after block {layer}")
        axes[1, column].set_xlabel("training tokens (millions)")
    axes[0, 0].set_ylabel("mean attention to position 0")
    axes[1, 0].set_ylabel("max |residual stream|")
    axes[0, 0].set_ylim(bottom=0)
    axes[1, 0].set_ylim(bottom=0)
    ax_loss.set(ylabel="nats", xlabel="training tokens (millions)", title="Held-out loss minus the baseline's")
    ax_loss.tick_params(labelbottom=True)
    ax_loss.axhline(0, color="0.4", linewidth=0.8)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    ax_legend.axis("off")
    ax_legend.legend(handles, labels, loc="center", frameon=False)
    windows = f"{n_windows} held-out windows" if n_windows else "the run's held-out windows"
    length = f" of {seq_len} tokens" if seq_len else ""
    fig.suptitle(f"Training curves of the bundled tiny models, measured on {windows}{length} at every evaluation")
    return fig


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


def write_corpus_list(manifest: Path, out: Path) -> Path:
    """`CORPUS.md`: the books of the corpus (title, author, Project Gutenberg number, split) from
    the corpus folder's `manifest.tsv`, with the licence line; the text itself is not copied."""
    books = pd.read_csv(manifest, sep="\t", dtype=str, keep_default_na=False)
    lines = [
        "# The books the bundled tiny models were trained on",
        "",
        f"{len(books)} public-domain children's books from Project Gutenberg, as picked from the GitHub",
        "repository `rcdm-uga/Gutenberg_Text` (commit a0b16d35a9851168ce9ac649851c17b7ab08d48e) and",
        f"de-duplicated: {int((books['split'] == 'train').sum())} for training (`train.txt`), "
        f"{int((books['split'] != 'train').sum())} held out (`valid.txt`).",
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
    path = out / "CORPUS.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _per_layer_table(title: str, metrics: dict[str, Any], key: str, fmt: str) -> list[str]:
    """Markdown lines: a titled table with one row per variant and one column per (0-based) layer."""
    n_layers = len(next(iter(metrics.values()))[key])
    lines = [
        "",
        title,
        "",
        "| variant | " + " | ".join(f"layer {i}" for i in range(n_layers)) + " |",
        "|---" * (n_layers + 1) + "|",
    ]
    for variant, m in metrics.items():
        lines.append(f"| {variant} | " + " | ".join(fmt.format(x) for x in m[key]) + " |")
    return lines


def write_card(
    out: Path,
    metrics: dict[str, Any],
    summary: dict[str, Any],
    corpus_info: dict[str, Any],
    strongest_layer: int,
    log: pd.DataFrame | None = None,
    other_seeds: dict[str, dict[str, Any]] | None = None,
    trials: list[dict[str, Any]] | None = None,
) -> None:
    """`README.md`, the model card. `other_seeds` maps each further seed of the same recipe to its
    variants' headline figures (`SEED_FIGURES`), measured on the same windows; the card then
    states the seed-to-seed spread. `trials` (`trial_summary`) are the shorter runs that chose the
    recipe."""
    train = TrainConfig.from_dict(summary["train_config"])  # also the old flat layout of metrics.json
    cfg, arch = vars(train), train.model
    variants = list(metrics)
    lines = [
        "# Bundled tiny gated-attention models",
        "",
        "Three small Qwen3-style models trained from scratch by `python -m gated_interp.train`, identical",
        "in tokenizer, data, data order, initial weights and hyperparameters, differing only in the",
        "attention-output gate: `baseline` (none), `gate_headwise` (one sigmoid gate per head) and",
        "`gate_elementwise` (one per head dimension). They are stored in exactly the format of the",
        "released 1B checkpoints (bf16 safetensors, gate rows inside `q_proj`) and load with",
        '`gated_interp.load_hooked("gate_headwise", size="tiny")`.',
        "",
        "## Data",
        "",
        "Public-domain children's books from Project Gutenberg (178 books by Baum, Lang, Alcott, Nesbit,",
        "Andersen, Burnett, Grimm, Kipling, Carroll, ...; the picks came from the GitHub repository",
        "`rcdm-uga/Gutenberg_Text`, with Project Gutenberg headers removed, de-duplicated and split by whole",
        "books: 170 for training, 8 held out). `CORPUS.md` lists every book (title, author, Project",
        "Gutenberg number) with the licence. The corpus text is not part of this package; to train again,",
        "put the books' text in a folder as `train.txt` and `valid.txt` (documents separated by one blank",
        "line) and pass that folder as `--corpus` to the training command below.",
        f"Training text: {corpus_info['train_bytes'] / 1e6:.1f} MB, {corpus_info['training_windows']:,} windows "
        f"of {cfg['seq_len']} tokens, each led by the document token `<|doc|>`.",
        "Tokenizer: byte-level BPE with 4,096 entries trained on the training text (`tokenizer.json`).",
        "",
        "## Architecture and training",
        "",
        f"- {arch.n_layers} layers, d_model {arch.d_model}, {arch.n_heads} query heads over "
        f"{arch.n_key_value_heads} key-value heads, d_head {arch.d_head}, SwiGLU d_mlp {arch.d_mlp}, "
        f"RMSNorm, {'q/k norm' if arch.use_qk_norm else 'no q/k norm'}, RoPE (theta {arch.rope_theta:g}), "
        f"untied embeddings, context {cfg['seq_len']}.",
        f"- AdamW, lr {cfg['lr']:g} (warm-up {cfg['warmup_steps']} steps, cosine to {cfg['min_lr_ratio']:g}x), "
        f"weight decay {cfg['weight_decay']}, betas {tuple(cfg['betas'])}, batch {cfg['batch_size']} x "
        f"{cfg['seq_len']} tokens, gradient clipping {cfg['grad_clip']}, seed {cfg['seed']}, fp32.",
        f"- Tokens seen per variant: {summary['tokens_seen']:,} ({summary['steps_done']} steps); "
        + (
            f"wall time for all three together: {summary['wall_time_s'] / 60:.0f} minutes on "
            if summary.get("processes", 1) == 1
            else f"wall time {summary['wall_time_s'] / 60:.0f} minutes, in {summary['processes']} parallel "
            "processes, on "
        )
        + f"{summary.get('hardware', 'a 2-core CPU')} with {summary['torch_threads']} torch thread(s).",
        "- Learning curves: `training_log.csv` (held-out loss, first-token attention and max |residual|",
        f"  per layer, every {cfg['eval_interval']} steps, on {cfg['eval_windows']} windows of the held-out books);"
        " plotted below, with each gated variant's loss drawn relative to the baseline's.",
        "",
        "![First-token attention, max |residual| and held-out loss during training](training_emergence.png)",
        "",
        "Command:",
        "",
        "```bash",
        summary.get("command", "python -m gated_interp.train --corpus CORPUS_DIR --out RUN_DIR"),
        summary.get(
            "card_command", "python -m gated_interp.train.card --run RUN_DIR --corpus CORPUS_DIR --out OUT_DIR"
        ),
        "```",
        "",
        "## Measured on held-out text",
        "",
        f"{metrics[variants[0]]['n_heldout_windows']} windows of {cfg['seq_len']} tokens from the held-out",
        "books (`heldout_tokens.safetensors`), each led by the document token; layers are numbered from 0,",
        "as in hook names and TransformerLens.",
        "",
        "| variant | held-out loss | F-Attn (all layers) | sink rate (eps 0.3) | M-Act | mean gate |",
        "|---|---|---|---|---|---|",
    ]
    for v in variants:
        m = metrics[v]
        gate = f"{m['mean_gate']:.3f}" if "mean_gate" in m else "-"
        lines.append(
            f"| {v} | {m['loss']:.4f} | {m['first_token_attention']:.4f} | {m['sink_rate']:.3f} "
            f"| {m['max_abs_resid']:.2f} | {gate} |"
        )
    uniform = uniform_first_token_attention(cfg["seq_len"])
    lines += _per_layer_table(
        "First-token attention per layer (mean attention that queries at positions >= 1 give to position 0; "
        f"a head that attends uniformly gives {uniform:.4f} on windows of {cfg['seq_len']} tokens):",
        metrics,
        "first_token_attention_by_layer",
        "{:.4f}",
    )
    lines += _per_layer_table("Max |residual stream| after each block:", metrics, "max_abs_resid_by_layer", "{:.1f}")
    if "baseline" in metrics:
        lines += _contrast_lines(metrics, strongest_layer, log)
    if trials:
        lines += _trial_lines(trials, summary.get("trial_note"))
    all_seeds = {str(cfg["seed"]): metrics, **(other_seeds or {})}
    if len(all_seeds) > 1:
        lines += _seed_lines(all_seeds, strongest_layer)
    else:
        lines += [
            "",
            f"Each variant was trained once, from seed {cfg['seed']}; the seed-to-seed spread of these numbers was",
            "not measured, so loss differences of a few hundredths of a nat between the variants may not",
            "survive another seed.",
        ]
    lines += [
        "",
        f"These are small models trained on a CPU for {summary['tokens_seen'] / 1e6:.0f}M tokens each. Sinks need "
        "many training",
        "tokens to form (Gu et al. report none below about 100M tokens for a 60M-parameter model), so the",
        "contrast here is a small-scale echo of the paper's (baseline F-Attn 0.467 against 0.048-0.073 with",
        "gates on 15B MoE models), not a reproduction of its size.",
        "",
        "## Sample generations",
        "",
        f"Prompt `{STORY_PROMPT}`, sampled with temperature 0.8, top-k 40, seed 0, 60 new tokens:",
        "",
    ]
    for v in variants:
        lines += [f"- **{v}**: {metrics[v]['sample'].strip()!r}"]
    lines += ["", "The figures above are re-measured by the test suite (`tests/test_bundled.py`).", ""]
    (out / "README.md").write_text("\n".join(lines))


SEED_FIGURES = ("loss", "first_token_attention_by_layer", "max_abs_resid_by_layer")  # what a card keeps per seed


def _goal_checks(metrics: dict[str, Any], layer: int) -> list[tuple[str, str, bool, str]]:
    """The goals set for the bundled models (issue 12), each as (goal, short name, met, the figure
    behind it)."""
    base = metrics["baseline"]
    gated = [v for v in metrics if v != "baseline"]
    checks = []
    if gated:
        ratio = min(
            base["first_token_attention_by_layer"][layer] / metrics[v]["first_token_attention_by_layer"][layer]
            for v in gated
        )
        checks.append(
            (
                f"first-token attention in the baseline's strongest layer (layer {layer}) at least 3x each gated "
                "variant's in that layer",
                f"first-token attention 3x (layer {layer})",
                ratio >= 3,
                f"smallest ratio {ratio:.1f}",
            )
        )
    if "gate_headwise" in metrics:
        resid = min(
            b / h for b, h in zip(base["max_abs_resid_by_layer"], metrics["gate_headwise"]["max_abs_resid_by_layer"])
        )
        checks.append(
            ("max |residual| of the baseline at least 5x gate_headwise's in every layer",
             "max |residual| 5x headwise", resid >= 5, f"smallest ratio {resid:.1f}")
        )  # fmt: skip
    if gated:
        gaps = ", ".join(f"{v} {metrics[v]['loss'] - base['loss']:+.3f}" for v in gated)
        met = all(metrics[v]["loss"] <= base["loss"] for v in gated)
        checks.append(
            (
                "held-out loss of every gated variant at most the baseline's",
                "gated loss at most the baseline's",
                met,
                f"minus the baseline's: {gaps}",
            )
        )
    return checks


def _contrast_lines(metrics: dict[str, Any], layer: int, log: pd.DataFrame | None) -> list[str]:
    """The card's paragraph on the sink contrast, and the goals, from the measured figures."""
    base = metrics["baseline"]
    gated = [v for v in metrics if v != "baseline"]
    by_layer = {v: metrics[v]["first_token_attention_by_layer"][layer] for v in metrics}
    ratios = ", ".join(f"{by_layer['baseline'] / by_layer[v]:.1f}x that of {v}" for v in gated)
    resid = []
    for v in gated:
        layer_ratios = [b / g for b, g in zip(base["max_abs_resid_by_layer"], metrics[v]["max_abs_resid_by_layer"])]
        resid.append(f"{min(layer_ratios):.1f}-{max(layer_ratios):.1f}x {v}'s")
    lines = [
        "",
        f"In the baseline's strongest sink layer (layer {layer}) first-token attention is {ratios}.",
        f"Layer by layer, the baseline's max |residual| is {' and '.join(resid)}.",
        "",
        "Goals we set for these models, on these windows:",
        "",
    ]
    lines += [
        f"- {goal}: {'met' if met else 'not met'} ({figure})." for goal, _, met, figure in _goal_checks(metrics, layer)
    ]
    if log is not None:
        trend = log_trends(log, layer)
        resid_text = (
            f"was at its largest ({trend['resid_peak']:.1f}, layer {trend['resid_peak_layer']}) at the last evaluation"
            if trend["resid_peak_is_last"]
            else f"peaked at {trend['resid_peak_tokens'] / 1e6:.1f}M tokens ({trend['resid_peak']:.1f} in layer "
            f"{trend['resid_peak_layer']}) and ended at {trend['resid_last']:.1f}"
        )
        direction = "still rising" if trend["attn_last"] > trend["attn_earlier"] else "no longer rising"
        lines += [
            "",
            f"When training stopped, the baseline's first-token attention in layer {layer} was {direction} over "
            f"the last fifth of training ({trend['attn_earlier']:.4f} at {trend['attn_earlier_tokens'] / 1e6:.1f}M "
            f"tokens, {trend['attn_last']:.4f} at {trend['attn_last_tokens'] / 1e6:.1f}M, in the training log), "
            f"and its max |residual| {resid_text}.",
        ]
    return lines


def _seed_lines(all_seeds: dict[str, dict[str, Any]], layer: int) -> list[str]:
    """A table of every seed's headline figures and the spread between seeds, per variant."""
    seeds = list(all_seeds)
    variants = list(all_seeds[seeds[0]])
    layer_names = " / ".join(
        str(i) for i in range(len(all_seeds[seeds[0]][variants[0]]["first_token_attention_by_layer"]))
    )
    lines = [
        "",
        "## Seed-to-seed spread",
        "",
        f"The same recipe was trained from {len(seeds)} seeds ({', '.join(seeds)}; the bundled models are seed "
        f"{seeds[0]}, the others are not shipped) and measured on the same held-out windows. The seed sets the",
        "initial weights and the data order; each seed's three variants share both. The sink can form",
        "in another layer at another seed, so the table gives every layer.",
        "",
        f"| variant | seed | held-out loss | first-token attention, layers {layer_names} "
        f"| max \\|residual\\|, layers {layer_names} |",
        "|---|---|---|---|---|",
    ]
    for v in variants:
        for seed in seeds:
            m = all_seeds[seed][v]
            attention = " / ".join(f"{x:.3f}" for x in m["first_token_attention_by_layer"])
            resid = " / ".join(f"{x:.1f}" for x in m["max_abs_resid_by_layer"])
            lines.append(f"| {v} | {seed} | {m['loss']:.4f} | {attention} | {resid} |")
    lines += ["", "Spread between seeds (largest minus smallest):", ""]
    for v in variants:
        loss = [all_seeds[s][v]["loss"] for s in seeds]
        attn = [all_seeds[s][v]["first_token_attention_by_layer"][layer] for s in seeds]
        resid = [max(all_seeds[s][v]["max_abs_resid_by_layer"]) for s in seeds]
        lines.append(
            f"- {v}: loss {max(loss) - min(loss):.4f}, first-token attention (layer {layer}) "
            f"{max(attn) - min(attn):.4f}, max |residual| (largest layer) {max(resid) - min(resid):.2f}."
        )
    if "baseline" in variants:
        lines += ["", "The goals above, seed by seed (each seed's strongest baseline layer):", ""]
        for seed in seeds:
            seed_layer = strongest_sink_layer(all_seeds[seed])
            checks = _goal_checks(all_seeds[seed], seed_layer)
            lines.append(
                f"- seed {seed}: "
                + "; ".join(f"{short}: {'met' if met else 'not met'} ({figure})" for _, short, met, figure in checks)
                + "."
            )
    return lines


def trial_summary(run: Path) -> list[dict[str, Any]]:
    """One row per variant of a trial run: its recipe and the last evaluation of its training log
    (the run's own held-out windows), for the card's record of the recipes tried."""
    if (run / CONFIG_FILE).is_file():  # written when a run starts: also there for a run stopped by hand
        config = TrainConfig.from_dict(json.loads((run / CONFIG_FILE).read_text()))
    else:
        config = TrainConfig.from_dict(json.loads((run / "training_summary.json").read_text())["train_config"])
    log = pd.read_csv(run / "training_log.csv")
    rows = []
    layers = _layers(log)
    for variant, variant_rows in log.groupby("variant", sort=False):
        last = variant_rows.sort_values("step").iloc[-1]
        attention = [float(last[f"first_token_attention_L{layer}"]) for layer in layers]
        rows.append(
            {
                "run": run.name,
                "variant": str(variant),
                "seq_len": config.seq_len,
                "batch_size": config.batch_size,
                "lr": config.lr,
                "weight_decay": config.weight_decay,
                "qk_norm": config.model.use_qk_norm,
                "tokens": int(last["tokens"]),
                "planned_tokens": config.n_steps * config.tokens_per_step,
                "eval_windows": config.eval_windows,
                "loss": float(last["val_loss"]),
                "first_token_attention_by_layer": attention,
                "max_abs_resid": max(float(last[f"max_abs_resid_L{layer}"]) for layer in layers),
            }
        )
    return rows


def _tokens_text(trial: dict[str, Any]) -> str:
    planned = trial.get("planned_tokens", trial["tokens"])
    return (
        f"{trial['tokens']:,}" if trial["tokens"] >= planned else f"{trial['tokens']:,} (stopped; {planned:,} planned)"
    )


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def _trial_lines(trials: list[dict[str, Any]], note: str | None = None) -> list[str]:
    lines = [
        "",
        "## Recipes tried",
        "",
        "Other runs tried for these models (none of them shipped), each at its last evaluation on its own",
        "held-out windows (its training log's, not the windows above). The uniform level is what a head",
        "attending evenly over the window gives position 0.",
        "",
        "| run | variant | window | batch | lr | weight decay | q/k norm | tokens | held-out loss | strongest "
        "first-token attention (layer) | uniform level | max \\|residual\\| |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in trials:
        attention = t["first_token_attention_by_layer"]
        layer = max(range(len(attention)), key=attention.__getitem__)
        lines.append(
            f"| {t['run']} | {t['variant']} | {t['seq_len']} | {t.get('batch_size', '-')} | {t['lr']:g} "
            f"| {t['weight_decay']:g} | {_yes_no(t.get('qk_norm', True))} | {_tokens_text(t)} "
            f"| {t['loss']:.3f} | {attention[layer]:.4f} ({layer}) | {uniform_first_token_attention(t['seq_len']):.4f} "
            f"| {t['max_abs_resid']:.1f} |"
        )
    if note:
        lines += ["", note]
    return lines


def strongest_sink_layer(metrics: dict[str, Any]) -> int:
    """The (0-based) layer where the baseline's first-token attention is largest; 0 without a baseline."""
    if "baseline" not in metrics:
        return 0
    by_layer = metrics["baseline"]["first_token_attention_by_layer"]
    return max(range(len(by_layer)), key=by_layer.__getitem__)


def render(out: Path) -> None:
    """Draw `training_emergence.png` and write `README.md` from a bundle's `metrics.json` and
    `training_log.csv`."""
    saved = json.loads((out / METRICS_FILE).read_text())
    metrics, summary, corpus_info = saved["variants"], saved["training"], saved["corpus"]
    strongest = strongest_sink_layer(metrics)
    log = pd.read_csv(out / "training_log.csv")
    config = summary["train_config"]
    fig = emergence_figure(log, config.get("eval_windows"), config.get("seq_len"))
    fig.savefig(out / "training_emergence.png", dpi=110)
    plt.close(fig)
    write_card(out, metrics, summary, corpus_info, strongest, log, saved.get("seeds"), saved.get("trials"))


def combine_runs(runs: list[Path]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Path], pd.DataFrame]:
    """One training summary, corpus info, variant → run folder and training log from one run folder,
    or from several that trained different variants with otherwise identical settings (one process
    per variant). Refuses runs that differ in anything but their variants."""
    summaries = [json.loads((run / "training_summary.json").read_text()) for run in runs]
    corpora = [json.loads((run / "corpus_info.json").read_text()) for run in runs]
    run_of: dict[str, Path] = {}
    for run, summary in zip(runs, summaries):
        for variant in summary["train_config"]["variants"]:
            if variant in run_of:
                raise ValueError(f"variant {variant!r} is in both {run_of[variant]} and {run}; give each variant once")
            run_of[variant] = run
    first, first_recipe = runs[0], run_recipe(runs[0])
    for run in runs[1:]:
        mismatch = recipe_differences(first_recipe, run_recipe(run))
        if mismatch:
            raise ValueError(
                f"{run} and {first} differ in {', '.join(mismatch)}: only runs with the same flags apart from "
                "--variants and --out (and trained as far) can share a card"
            )
    order = [v for v in VARIANT_GATES if v in run_of] + [v for v in run_of if v not in VARIANT_GATES]
    summary = dict(summaries[0])
    summary["train_config"] = {**summary["train_config"], "variants": order}
    if len(runs) > 1:
        summary["wall_time_s"] = max(s["wall_time_s"] for s in summaries)
        summary["processes"] = len(runs)
        threads = sorted({s["torch_threads"] for s in summaries})  # a resumed process may have used other
        summary["torch_threads"] = threads[0] if len(threads) == 1 else " or ".join(map(str, threads))
    log = pd.concat([pd.read_csv(run / "training_log.csv") for run in runs], ignore_index=True)
    log["_order"] = log["variant"].map(order.index)
    log = log.sort_values(["step", "_order"], kind="stable").drop(columns="_order").reset_index(drop=True)
    return summary, corpora[0], run_of, log


@dataclass(frozen=True)
class Recipe:
    """What must agree for runs to be compared or combined: the train config (normalised, so a
    bundle's old flat layout equals the nested one), the steps done, the corpus and the tokenizer."""

    train_config: dict[str, Any]
    steps_done: int
    corpus: dict[str, Any]
    tokenizer: dict[str, Any]

    @property
    def seed(self) -> int:
        return self.train_config["seed"]


def _normalised_config(config: dict[str, Any]) -> dict[str, Any]:
    normal = TrainConfig.from_dict(config).to_dict()
    # Runs written before `extra` recorded --max-corpus-bytes say {}; an unset limit is None.
    normal["extra"] = {key: value for key, value in normal["extra"].items() if value is not None}
    return normal


def run_recipe(run: Path) -> Recipe:
    summary = json.loads((run / "training_summary.json").read_text())
    return Recipe(
        _normalised_config(summary["train_config"]),
        summary["steps_done"],
        json.loads((run / "corpus_info.json").read_text()),
        json.loads((run / "_tokenizer" / "tokenizer.json").read_text()),
    )


def bundle_recipe(bundle: Path) -> Recipe:
    saved = json.loads((bundle / METRICS_FILE).read_text())
    first_variant = next(iter(saved["variants"]))
    return Recipe(
        _normalised_config(saved["training"]["train_config"]),
        saved["training"]["steps_done"],
        saved["corpus"],
        json.loads((bundle / first_variant / "tokenizer.json").read_text()),
    )


def recipe_differences(a: Recipe, b: Recipe, ignored_keys: tuple[str, ...] = ()) -> list[str]:
    """What sets `b` apart from `a` beyond its variants (and `ignored_keys` of the train config).
    Empty for one recipe."""
    corpus_keys = ("corpus", "train_bytes", "training_windows", "eval_windows")
    checks = [
        ("train config", _without(a.train_config, ignored_keys), _without(b.train_config, ignored_keys)),
        ("steps done", a.steps_done, b.steps_done),
        ("corpus", [a.corpus.get(k) for k in corpus_keys], [b.corpus.get(k) for k in corpus_keys]),
        ("tokenizer", a.tokenizer, b.tokenizer),
    ]
    return [what for what, mine, theirs in checks if mine != theirs]


def _without(config: dict[str, Any], ignored_keys: tuple[str, ...]) -> dict[str, Any]:
    return {key: value for key, value in config.items() if key not in ("variants", *ignored_keys)}


def group_seed_runs(runs: list[Path], bundled: Recipe) -> dict[str, list[Path]]:
    """`--seed-run` folders grouped by their seed, each group checked to be the bundled run's
    recipe (same settings apart from the seed, trained as far, same corpus and tokenizer)."""
    groups: dict[str, list[Path]] = {}
    for run in runs:
        recipe = run_recipe(run)
        if recipe.seed == bundled.seed:
            raise ValueError(f"{run} has the bundled runs' seed ({recipe.seed}); --seed-run takes runs of other seeds")
        mismatch = recipe_differences(bundled, recipe, ignored_keys=("seed",))
        if mismatch:
            raise ValueError(
                f"--seed-run {run} differs from the bundled runs in {', '.join(mismatch)}: give runs of the same "
                "recipe (the same flags apart from --seed, --variants and --out, trained as far)"
            )
        groups.setdefault(str(recipe.seed), []).append(run)
    return groups


def measure_seeds(
    seed_runs: dict[str, tuple[Any, Any, dict[str, Path], pd.DataFrame]],
    variants: list[str],
    tokens: torch.Tensor,
) -> dict[str, dict[str, Any]]:
    """Each further seed's `SEED_FIGURES`, measured on the card's held-out windows."""
    other_seeds: dict[str, dict[str, Any]] = {}
    for seed, (_, _, seed_run_of, _) in seed_runs.items():
        other_seeds[seed] = {}
        for variant in variants:
            measured = measure(load_hooked(seed_run_of[variant] / variant, progress=False), tokens)
            other_seeds[seed][variant] = {key: measured[key] for key in SEED_FIGURES}
        print(f"seed {seed}", {v: round(m["loss"], 4) for v, m in other_seeds[seed].items()})
    return other_seeds


def log_with_seeds(
    log: pd.DataFrame, bundled_seed: int, seed_runs: dict[str, tuple[Any, Any, Any, pd.DataFrame]]
) -> pd.DataFrame:
    """One training log for all seeds, the bundled seed's rows first, with a `seed` column. Rows of
    seeds already in `log` stay, unless `seed_runs` gives that seed again."""
    if "seed" not in log.columns:
        log = log.assign(seed=bundled_seed)
    log = log[~log["seed"].isin([int(seed) for seed in seed_runs if int(seed) != bundled_seed])]
    for seed, (_, _, _, seed_log) in seed_runs.items():
        log = pd.concat([log, seed_log.assign(seed=int(seed))], ignore_index=True)
    return log


def _check_seed_variants(seed_runs: dict[str, Any], variants: list[str]) -> None:
    for seed, (_, _, seed_run_of, _) in seed_runs.items():
        if sorted(seed_run_of) != sorted(variants):
            raise ValueError(
                f"the seed-{seed} runs hold {sorted(seed_run_of)}, the bundled runs {sorted(variants)}; "
                "--seed-run needs every variant at every seed"
            )


def card_command(card_runs: dict[str, list[str]]) -> str:
    """The command that writes the card from these run folders (`--run`, `--seed-run`, `--trial-run`)."""
    parts = ["python -m gated_interp.train.card"]
    for option in ("run", "seed_run", "trial_run"):
        if card_runs.get(option):
            parts += ["--" + option.replace("_", "-"), *card_runs[option]]
    return " ".join(parts + ["--corpus CORPUS_DIR --out OUT_DIR"])


def add_to_bundle(
    bundle: Path, seed_run: list[Path], trials: list[dict[str, Any]] | None, trial_note: str | None
) -> None:
    """Record runs made after `bundle` was written: further seeds of its recipe (measured on its
    held-out windows, their logs appended to its training log) and trials (added to those already
    recorded). Everything is checked before anything is written."""
    saved = json.loads((bundle / METRICS_FILE).read_text())
    variants = list(saved["variants"])
    seed_runs = {seed: combine_runs(group) for seed, group in group_seed_runs(seed_run, bundle_recipe(bundle)).items()}
    _check_seed_variants(seed_runs, variants)
    card_runs = saved["training"].get("card_runs", {"run": ["RUN_DIR"]})
    if seed_runs:
        tokens = load_file(str(bundle / HELDOUT_FILE))["tokens"].long()
        saved["seeds"] = {**saved.get("seeds", {}), **measure_seeds(seed_runs, variants, tokens)}
        bundled_seed = saved["training"]["train_config"]["seed"]
        log = log_with_seeds(pd.read_csv(bundle / "training_log.csv"), bundled_seed, seed_runs)
        log.to_csv(bundle / "training_log.csv", index=False)
        card_runs["seed_run"] = list(
            dict.fromkeys(card_runs.get("seed_run", []) + [f"runs/{r.name}" for r in seed_run])
        )
    if trials is not None:  # added to the trials already recorded; a run given again replaces its rows
        new_runs = {t["run"] for t in trials}
        saved["trials"] = [t for t in saved.get("trials", []) if t["run"] not in new_runs] + trials
        card_runs["trial_run"] = [f"runs/{name}" for name in dict.fromkeys(t["run"] for t in saved["trials"])]
    if trial_note:
        saved["training"]["trial_note"] = trial_note
    saved["training"]["card_runs"] = card_runs
    saved["training"]["card_command"] = card_command(card_runs)
    (bundle / METRICS_FILE).write_text(json.dumps(saved, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gated_interp.train.card",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--run",
        type=Path,
        nargs="+",
        help="output folder of python -m gated_interp.train; several when the variants were trained in "
        "separate processes (same flags apart from --variants and --out)",
    )
    parser.add_argument(
        "--seed-run",
        type=Path,
        nargs="+",
        default=[],
        metavar="RUN_DIR",
        help="runs of the same recipe from other seeds (not shipped): measured on the same windows for the "
        "card's seed-to-seed spread",
    )
    parser.add_argument(
        "--trial-run",
        type=Path,
        nargs="+",
        default=[],
        metavar="RUN_DIR",
        help="shorter runs that chose the recipe: the card lists their recipe and last evaluation",
    )
    parser.add_argument("--trial-note", default=None, help="what the trials showed and why the recipe was chosen")
    parser.add_argument("--corpus", type=Path, help="folder with valid.txt (and manifest.tsv, the list of books)")
    parser.add_argument("--out", type=Path, help="bundle folder to write")
    parser.add_argument(
        "--from-bundle",
        type=Path,
        metavar="BUNDLE",
        help="re-render BUNDLE's card and plot from its metrics.json, after recording any --seed-run (measured on "
        "BUNDLE's held-out windows) and --trial-run given",
    )
    parser.add_argument("--heldout-windows", type=int, default=64)
    parser.add_argument("--hardware", default="a 2-core x86-64 CPU (no GPU)")
    parser.add_argument("--command", default=None, help="the training command, for the card")
    args = parser.parse_args(argv)
    try:  # read the trial runs first: a wrong folder is an error before anything is measured or written
        trials = [row for run in args.trial_run for row in trial_summary(run)]
    except (FileNotFoundError, KeyError, ValueError) as error:
        parser.error(f"--trial-run: {error}; give folders written by python -m gated_interp.train")
    if args.from_bundle is not None:
        if args.trial_run or args.trial_note or args.seed_run:  # record runs made after the bundle was
            try:
                add_to_bundle(args.from_bundle, args.seed_run, trials if args.trial_run else None, args.trial_note)
            except (ValueError, FileNotFoundError, KeyError) as error:
                parser.error(str(error))
        render(args.from_bundle)
        print(f"wrote {args.from_bundle / 'README.md'} and {args.from_bundle / 'training_emergence.png'}")
        return 0
    if args.run is None or args.corpus is None or args.out is None:
        parser.error("--run, --corpus and --out are needed (or --from-bundle BUNDLE to re-render a card)")

    try:
        summary, corpus_info, run_of, log = combine_runs(args.run)
        seed_groups = group_seed_runs(args.seed_run, run_recipe(args.run[0]))
        seed_runs = {seed: combine_runs(group) for seed, group in seed_groups.items()}
    except (ValueError, FileNotFoundError, KeyError) as error:
        parser.error(str(error))
    variants = summary["train_config"]["variants"]
    try:
        _check_seed_variants(seed_runs, variants)
    except ValueError as error:
        parser.error(str(error))
    summary["hardware"] = args.hardware
    summary["card_runs"] = {
        option: [f"runs/{run.name}" for run in runs]
        for option, runs in (("run", args.run), ("seed_run", args.seed_run), ("trial_run", args.trial_run))
        if runs
    }
    summary["card_command"] = card_command(summary["card_runs"])
    if args.command:
        summary["command"] = args.command
    if args.trial_note:
        summary["trial_note"] = args.trial_note
    corpus_info["corpus"] = Path(corpus_info.get("corpus", args.corpus)).name  # no local paths in the bundle
    args.out.mkdir(parents=True, exist_ok=True)
    for variant in variants:
        (args.out / variant).mkdir(exist_ok=True)
        for name in CHECKPOINT_FILES:
            shutil.copy2(run_of[variant] / variant / name, args.out / variant / name)
    if seed_runs:
        log = log_with_seeds(log, summary["train_config"]["seed"], seed_runs)
    if len(args.run) == 1 and not seed_runs:
        shutil.copy2(args.run[0] / "training_log.csv", args.out / "training_log.csv")
    else:
        log.to_csv(args.out / "training_log.csv", index=False)
    if (args.corpus / "manifest.tsv").is_file():
        write_corpus_list(args.corpus / "manifest.tsv", args.out)

    model = load_hooked(args.out / variants[0], progress=False)
    seq_len = summary["train_config"]["seq_len"]
    tokens = evaluation_windows(model.tokenizer, args.corpus / "valid.txt", seq_len, args.heldout_windows)
    save_file({"tokens": tokens.to(torch.int32).contiguous()}, str(args.out / HELDOUT_FILE))

    metrics: dict[str, Any] = {}
    for variant in variants:
        model = load_hooked(args.out / variant, progress=False)
        metrics[variant] = measure(model, tokens)
        metrics[variant]["n_heldout_windows"] = int(tokens.shape[0])
        metrics[variant]["sample"] = model.generate(
            STORY_PROMPT, max_new_tokens=60, temperature=0.8, top_k=40, seed=0, verbose=False
        )
        print(variant, {k: v for k, v in metrics[variant].items() if not isinstance(v, (list, str))})
    other_seeds = measure_seeds(seed_runs, variants, tokens)
    metrics_meta = {"training": summary, "corpus": corpus_info}
    if other_seeds:
        metrics_meta["seeds"] = other_seeds
    if args.trial_run:
        metrics_meta["trials"] = trials
    (args.out / METRICS_FILE).write_text(json.dumps({"variants": metrics, **metrics_meta}, indent=2) + "\n")
    render(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
