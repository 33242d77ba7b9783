"""`python -m gated_interp.train.card`: measure trained variants and write the bundle + model card.

    python -m gated_interp.train.card --run RUN_DIR --corpus CORPUS_DIR --out gated_interp/checkpoints/tiny

Copies each variant's checkpoint from the training run, fixes the held-out windows the card is
measured on (shipped as `heldout_tokens.safetensors`), measures every variant on them through the
same `load_hooked` path users take (so the card's figures are those of the bf16 files shipped), and
writes `metrics.json`, `training_log.csv`, `training_emergence.png` and `README.md` (the card).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from gated_interp import analysis  # noqa: E402
from gated_interp.loading import load_hooked  # noqa: E402
from gated_interp.loading.bundled import HELDOUT_FILE, METRICS_FILE  # noqa: E402
from gated_interp.train.data import evaluation_windows  # noqa: E402

CHECKPOINT_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
STORY_PROMPT = "Once upon a time there was a little girl who"


@torch.no_grad()
def measure(model, tokens: torch.Tensor, batch_size: int = 16) -> dict[str, Any]:
    """Held-out loss and the sink / activation / gate figures, over all windows."""
    losses, caches = [], []
    keep = ("hook_pattern", "hook_resid_post", "hook_gate")
    for start in range(0, tokens.shape[0], batch_size):
        batch = tokens[start : start + batch_size]
        loss, cache = model.run_with_cache(batch, return_type="loss", names_filter=lambda n: n.endswith(keep))
        losses.append(float(loss) * batch.shape[0])
        caches.append(cache.cache_dict)
    merged = {name: torch.cat([c[name] for c in caches]) for name in caches[0]}
    result: dict[str, Any] = {
        "heldout_loss": sum(losses) / tokens.shape[0],
        "first_token_attention_by_layer": analysis.first_token_attention_by_layer(merged).tolist(),
        "f_attn": float(analysis.first_token_attention(merged, per="model")),
        "sink_rate": analysis.sink_rate(merged, eps=0.3),
        "max_abs_resid_by_layer": analysis.max_activation_by_layer(merged).tolist(),
        "m_act": analysis.m_act(merged),
    }
    if model.cfg.is_gated:
        result["mean_gate"] = analysis.mean_gate_score(merged)
        result["mean_gate_by_layer"] = analysis.mean_gate_by_head(merged).mean(-1).tolist()
        stats = analysis.gate_stats(merged)
        result["gate_frac_below_0.1"] = float(stats["frac_below_0.1"].mean())
    return result


def emergence_figure(log: pd.DataFrame, layer: int) -> plt.Figure:
    """First-token attention in `layer` and held-out loss against training tokens, per variant."""
    fig, (ax_sink, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    for variant, rows in log.groupby("variant", sort=False):
        ax_sink.plot(rows["tokens"] / 1e6, rows[f"first_token_attn_L{layer}"], marker=".", label=variant)
        ax_loss.plot(rows["tokens"] / 1e6, rows["val_loss"], marker=".", label=variant)
    ax_sink.set(
        xlabel="training tokens (millions)",
        ylabel="mean attention to position 0",
        title=f"First-token attention during training, layer {layer + 1}",
    )
    ax_loss.set(
        xlabel="training tokens (millions)", ylabel="held-out loss (nats/token)", title="Held-out loss during training"
    )
    for ax in (ax_sink, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def _per_layer_table(title: str, metrics: dict[str, Any], key: str, fmt: str) -> list[str]:
    """Markdown lines: a titled table with one row per variant and one column per (1-based) layer."""
    n_layers = len(next(iter(metrics.values()))[key])
    lines = [
        "",
        title,
        "",
        "| variant | " + " | ".join(f"layer {i + 1}" for i in range(n_layers)) + " |",
        "|---" * (n_layers + 1) + "|",
    ]
    for variant, m in metrics.items():
        lines.append(f"| {variant} | " + " | ".join(fmt.format(x) for x in m[key]) + " |")
    return lines


def write_card(
    out: Path, metrics: dict[str, Any], summary: dict[str, Any], corpus_info: dict[str, Any], strongest_layer: int
) -> None:
    cfg = summary["train_config"]
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
        "books: 170 for training, 8 held out). The corpus is not part of this package; rebuild it as its",
        "README describes, then run the training command below with `--corpus` pointing at the folder",
        "holding `train.txt` and `valid.txt`.",
        f"Training text: {corpus_info['train_bytes'] / 1e6:.1f} MB, {corpus_info['training_windows']:,} windows "
        f"of {cfg['seq_len']} tokens, each led by the document token `<|doc|>`.",
        "Tokenizer: byte-level BPE with 4,096 entries trained on the training text (`tokenizer.json`).",
        "",
        "## Architecture and training",
        "",
        f"- {cfg['n_layers']} layers, d_model {cfg['d_model']}, {cfg['n_heads']} query heads over "
        f"{cfg['n_key_value_heads']} key-value heads, d_head {cfg['d_head']}, SwiGLU d_mlp {cfg['d_mlp']}, "
        f"RMSNorm, q/k norm, RoPE (theta {cfg['rope_theta']:g}), untied embeddings, context {cfg['seq_len']}.",
        f"- AdamW, lr {cfg['lr']:g} (warm-up {cfg['warmup_steps']} steps, cosine to {cfg['min_lr_ratio']:g}x), "
        f"weight decay {cfg['weight_decay']}, betas {tuple(cfg['betas'])}, batch {cfg['batch_size']} x "
        f"{cfg['seq_len']} tokens, gradient clipping {cfg['grad_clip']}, seed {cfg['seed']}, fp32.",
        f"- Tokens seen per variant: {summary['tokens_seen']:,} ({summary['steps_done']} steps); "
        f"wall time for all three together: {summary['wall_time_s'] / 60:.0f} minutes on "
        f"{summary.get('hardware', 'a 2-core CPU')} with {summary['torch_threads']} torch thread(s).",
        "- Learning curves: `training_log.csv` (held-out loss, first-token attention and max |residual|",
        "  per layer, every evaluation step, on the run's own held-out windows); plotted below.",
        "",
        "![First-token attention and held-out loss during training](training_emergence.png)",
        "",
        "Command:",
        "",
        "```bash",
        summary.get("command", "python -m gated_interp.train --corpus CORPUS_DIR --out RUN_DIR"),
        "python -m gated_interp.train.card --run RUN_DIR --corpus CORPUS_DIR --out gated_interp/checkpoints/tiny",
        "```",
        "",
        "## Measured on held-out text",
        "",
        f"{metrics[variants[0]]['n_heldout_windows']} windows of {cfg['seq_len']} tokens from the held-out",
        "books (`heldout_tokens.safetensors`), each led by the document token; layers are 1-based.",
        "",
        "| variant | held-out loss | F-Attn (all layers) | sink rate (eps 0.3) | M-Act | mean gate |",
        "|---|---|---|---|---|---|",
    ]
    for v in variants:
        m = metrics[v]
        gate = f"{m['mean_gate']:.3f}" if "mean_gate" in m else "-"
        lines.append(
            f"| {v} | {m['heldout_loss']:.4f} | {m['f_attn']:.4f} | {m['sink_rate']:.3f} | {m['m_act']:.2f} | {gate} |"
        )
    lines += _per_layer_table(
        "First-token attention per layer (mean attention that queries at positions >= 1 give to position 0):",
        metrics,
        "first_token_attention_by_layer",
        "{:.4f}",
    )
    lines += _per_layer_table("Max |residual stream| after each block:", metrics, "max_abs_resid_by_layer", "{:.1f}")
    base = metrics.get("baseline")
    if base is not None:
        layer = strongest_layer
        lines += ["", f"In the baseline's strongest sink layer (layer {layer + 1}) first-token attention is "]
        by_layer = {v: metrics[v]["first_token_attention_by_layer"][layer] for v in variants}
        ratios = [f"{by_layer['baseline'] / by_layer[v]:.1f}x that of {v}" for v in variants if v != "baseline"]
        lines[-1] += ", ".join(ratios) + "."
        weakest = min(by_layer["baseline"] / by_layer[v] for v in variants if v != "baseline")
        if weakest < 3:
            lines += [
                "",
                f"Our goal for these models was a ratio of at least 3 in that layer; with {summary['tokens_seen']:,} "
                f"training tokens the smallest is {weakest:.1f}. The baseline's first-token attention and",
                "max |residual| were still growing when training stopped (see the plot above), so more training",
                "tokens (a longer CPU run, or a GPU) should widen the contrast.",
            ]
    lines += [
        "",
        "These are small models trained on a CPU for a few million tokens. Sinks need many training",
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gated_interp.train.card",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--run", type=Path, required=True, help="output folder of python -m gated_interp.train")
    parser.add_argument("--corpus", type=Path, required=True, help="folder with valid.txt")
    parser.add_argument("--out", type=Path, required=True, help="bundle folder, e.g. gated_interp/checkpoints/tiny")
    parser.add_argument("--heldout-windows", type=int, default=64)
    parser.add_argument("--hardware", default="a 2-core x86-64 CPU (no GPU)")
    parser.add_argument("--command", default=None, help="the training command, for the card")
    args = parser.parse_args(argv)

    summary = json.loads((args.run / "training_summary.json").read_text())
    summary["hardware"] = args.hardware
    if args.command:
        summary["command"] = args.command
    corpus_info = json.loads((args.run / "corpus_info.json").read_text())
    variants = summary["train_config"]["variants"]
    args.out.mkdir(parents=True, exist_ok=True)
    for variant in variants:
        (args.out / variant).mkdir(exist_ok=True)
        for name in CHECKPOINT_FILES:
            shutil.copy2(args.run / variant / name, args.out / variant / name)
    shutil.copy2(args.run / "training_log.csv", args.out / "training_log.csv")

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
    metrics_meta = {"training": summary, "corpus": corpus_info}
    (args.out / METRICS_FILE).write_text(json.dumps({"variants": metrics, **metrics_meta}, indent=2) + "\n")

    strongest = 0
    if "baseline" in metrics:
        by_layer = metrics["baseline"]["first_token_attention_by_layer"]
        strongest = max(range(len(by_layer)), key=by_layer.__getitem__)
    log = pd.read_csv(args.out / "training_log.csv")
    fig = emergence_figure(log, strongest)
    fig.savefig(args.out / "training_emergence.png", dpi=120)
    write_card(args.out, metrics, summary, corpus_info, strongest)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
