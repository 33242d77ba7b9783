"""`python -m maintainer.model_card`: measure trained variants and write the bundle + model card.

    python -m maintainer.model_card --run runs/tiny --corpus CORPUS_DIR --out OUT_DIR
    python -m maintainer.model_card --run runs/a runs/b --corpus CORPUS_DIR --out OUT_DIR  # one process per variant
    python -m maintainer.model_card --from-bundle gated_interp/checkpoints/tiny   # re-render text + plot
    python -m maintainer.model_card --from-bundle BUNDLE --seed-run runs/s1_a runs/s1_b  # add a seed

Run it from the root of a clone (this folder is not installed). Copies each variant's checkpoint
from the training run, fixes the held-out windows the card is measured on (shipped as
`heldout_tokens.safetensors`), measures every variant on them through the same `load_hooked` path
users take (so the card's figures are those of the bf16 files shipped), and writes
`metrics.json`, `training_log.csv`, `training_emergence.png`, `CORPUS.md` (the books, from the
corpus folder's `manifest.tsv`) and `README.md` (the card, from `model_card.md.j2`; for a hybrid
pair trained with `--layout qwen3_5`, from `hybrid_card.md.j2`). `metrics.json` is strict JSON:
a figure a layer does not have (first-token attention on a linear-attention layer) is null.
`--from-bundle` re-renders the card and the plot from a bundle's `metrics.json` and
`training_log.csv` without measuring again; with `--seed-run` or `--trial-run` it first records
runs made after the bundle (other seeds of its recipe are measured on its own held-out windows).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
from pathlib import Path
from typing import Any

import matplotlib
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from gated_interp.analysis import measure as measure_model
from gated_interp.loading import load_hooked
from gated_interp.loading.bundled import HELDOUT_FILE, METRICS_FILE
from gated_interp.train.data import evaluation_windows
from maintainer.card_runs import (
    CARD_PROGRAM,
    bundle_recipe,
    check_seed_variants,
    combine_runs,
    group_seed_runs,
    log_with_seeds,
    run_recipe,
    trial_summary,
)
from maintainer.card_text import FIGURE_FILE, SAMPLING, SEED_FIGURES, log_trends, render, write_corpus_list

__all__ = ["log_trends", "main", "measure", "render"]

# A variant's folder in the bundle: the model (required) and the tokenizer files the run has
# (newer transformers write no special_tokens_map.json; the hybrid runs' folders have none).
REQUIRED_CHECKPOINT_FILES = ("config.json", "model.safetensors")
OPTIONAL_CHECKPOINT_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
CHECKPOINT_FILES = REQUIRED_CHECKPOINT_FILES + OPTIONAL_CHECKPOINT_FILES


def measure(model, tokens: torch.Tensor, batch_size: int = 16) -> dict[str, Any]:
    """Held-out loss and the sink / activation / gate figures over all windows: the one
    measurement loop (`gated_interp.analysis.measure`), under the names it gives each quantity.
    Strict JSON: a quantity a layer does not have (first-token attention and gate on a hybrid's
    linear-attention layers, NaN in the measurement) is None; a hybrid also records its layer types."""
    measured = {
        key: _none_for_nan(value)
        for key, value in measure_model(model, tokens, batch_size=batch_size, progress=False).as_dict().items()
    }
    if model.cfg.layer_types is not None:
        measured["layer_types"] = list(model.cfg.layer_types)
    return measured


def _none_for_nan(value: Any) -> Any:
    if isinstance(value, list):
        return [_none_for_nan(x) for x in value]
    return None if isinstance(value, float) and math.isnan(value) else value


def copy_checkpoints(run_of: dict[str, Path], variants: list[str], out: Path) -> None:
    """Each variant's model and tokenizer files into `out/<variant>/`; every run's required files
    are checked before anything is copied."""
    missing = [
        str(run_of[v] / v / name)
        for v in variants
        for name in REQUIRED_CHECKPOINT_FILES
        if not (run_of[v] / v / name).is_file()
    ]
    if missing:
        raise FileNotFoundError(f"no {', '.join(missing)}: --run needs finished runs with each variant's checkpoint")
    for variant in variants:
        (out / variant).mkdir(parents=True, exist_ok=True)
        for name in CHECKPOINT_FILES:
            if (run_of[variant] / variant / name).is_file():
                shutil.copy2(run_of[variant] / variant / name, out / variant / name)


def this_machine() -> str:
    """The machine this command runs on, in the card's words ("a 2-core x86-64 CPU (no GPU)")."""
    gpu = f"with a {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no GPU"
    return f"a {os.cpu_count()}-core {platform.machine().replace('_', '-')} CPU ({gpu})"


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


def add_to_bundle(
    bundle: Path, seed_run: list[Path], trials: list[dict[str, Any]] | None, trial_note: str | None
) -> None:
    """Record runs made after `bundle` was written: further seeds of its recipe (measured on its
    held-out windows, their logs appended to its training log) and trials (added to those already
    recorded). Everything is checked before anything is written."""
    saved = json.loads((bundle / METRICS_FILE).read_text())
    variants = list(saved["variants"])
    seed_runs = {seed: combine_runs(group) for seed, group in group_seed_runs(seed_run, bundle_recipe(bundle)).items()}
    check_seed_variants(seed_runs, variants)
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
    saved["training"].pop("card_command", None)  # older bundles: the card renders it from card_runs
    (bundle / METRICS_FILE).write_text(json.dumps(saved, indent=2, allow_nan=False) + "\n")


def parse_args(argv: list[str] | None = None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog=CARD_PROGRAM, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
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
    parser.add_argument(
        "--hardware",
        default=None,
        help="the machine the runs trained on, for the card (default: this one, e.g. "
        "'a 2-core x86-64 CPU (no GPU)'); recorded in metrics.json",
    )
    parser.add_argument("--command", default=None, help="the training command, for the card")
    return parser, parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    matplotlib.use("Agg")  # the card's figure is written to a file, never shown
    parser, args = parse_args(argv)
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
        print(f"wrote {args.from_bundle / 'README.md'} and {args.from_bundle / FIGURE_FILE}")
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
        check_seed_variants(seed_runs, variants)
    except ValueError as error:
        parser.error(str(error))
    summary["hardware"] = args.hardware or this_machine()
    summary["card_runs"] = {
        option: [f"runs/{run.name}" for run in runs]
        for option, runs in (("run", args.run), ("seed_run", args.seed_run), ("trial_run", args.trial_run))
        if runs
    }
    if args.command:
        summary["command"] = args.command
    if args.trial_note:
        summary["trial_note"] = args.trial_note
    corpus_info["corpus"] = Path(corpus_info.get("corpus", args.corpus)).name  # no local paths in the bundle
    try:
        copy_checkpoints(run_of, variants, args.out)
    except FileNotFoundError as error:
        parser.error(str(error))
    if seed_runs:
        log = log_with_seeds(log, summary["train_config"]["seed"], seed_runs)
    if len(args.run) == 1 and not seed_runs:
        shutil.copy2(args.run[0] / "training_log.csv", args.out / "training_log.csv")
    else:
        log.to_csv(args.out / "training_log.csv", index=False)
    if (args.corpus / "manifest.tsv").is_file():
        corpus_info["books"] = write_corpus_list(args.corpus / "manifest.tsv", args.out)

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
            SAMPLING["prompt"],
            max_new_tokens=SAMPLING["max_new_tokens"],
            temperature=SAMPLING["temperature"],
            top_k=SAMPLING["top_k"],
            seed=SAMPLING["seed"],
            verbose=False,
        )
        print(variant, {k: v for k, v in metrics[variant].items() if not isinstance(v, (list, str))})
    other_seeds = measure_seeds(seed_runs, variants, tokens)
    metrics_meta = {"training": summary, "corpus": corpus_info}
    if other_seeds:
        metrics_meta["seeds"] = other_seeds
    if args.trial_run:
        metrics_meta["trials"] = trials
    (args.out / METRICS_FILE).write_text(
        json.dumps({"variants": metrics, **metrics_meta}, indent=2, allow_nan=False) + "\n"
    )
    render(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
