"""Reading training runs for the model card: one summary and log from the run folders of one
recipe (one process per variant allowed), the checks that runs share a recipe, the other seeds
and trials recorded next to the bundled run, and the command that writes a card from them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from gated_interp.loading.bundled import METRICS_FILE
from gated_interp.plotting.training import logged_layers, residual_layers
from gated_interp.train.__main__ import (
    FLOAT_OPTIONS,
    INT_OPTIONS,
    MODEL_FLOAT_OPTIONS,
    MODEL_INT_OPTIONS,
)
from gated_interp.train.trainer import CONFIG_FILE, TRAINABLE_VARIANT_GATES, TrainConfig

CARD_PROGRAM = "python -m maintainer.model_card"
DEFAULT_VOCAB_SIZE = 4096  # python -m gated_interp.train's --vocab-size


def card_command(card_runs: dict[str, list[str]]) -> str:
    """The command that writes the card from these run folders (`--run`, `--seed-run`, `--trial-run`)."""
    parts = [CARD_PROGRAM]
    for option in ("run", "seed_run", "trial_run"):
        if card_runs.get(option):
            parts += ["--" + option.replace("_", "-"), *card_runs[option]]
    return " ".join(parts + ["--corpus CORPUS_DIR --out OUT_DIR"])


def train_commands(summary: dict[str, Any], variants: list[str]) -> list[str]:
    """The training commands behind a card: the one recorded with `--command` (one line per variant
    where it says VARIANT and each variant trained in its own process), else one rebuilt from the
    recorded train config."""
    separate = summary.get("processes", 1) == len(variants) > 1
    command = summary.get("command") or rebuilt_train_command(summary, variants)
    if separate and "VARIANT" in command:
        return [command.replace("VARIANT", variant) for variant in variants]
    return [command]


def rebuilt_train_command(summary: dict[str, Any], variants: list[str]) -> str:
    """`python -m gated_interp.train` with the flags that give the recorded train config: those
    whose value differs from the trainer's default (`--variants VARIANT` for one process per variant)."""
    train, default = TrainConfig.from_dict(summary["train_config"]), TrainConfig()
    parts = ["python -m gated_interp.train --corpus CORPUS_DIR --out RUN_DIR"]
    if train.model.layer_types:
        parts.append("--layout qwen3_5")
    separate = summary.get("processes", 1) == len(variants) > 1
    parts.append("--variants " + ("VARIANT" if separate else " ".join(variants)))
    tokens = train.total_tokens
    parts.append(f"--tokens {tokens / 1e6:g}e6" if tokens % 100_000 == 0 else f"--tokens {tokens}")
    if isinstance(summary.get("torch_threads"), int):
        parts.append(f"--threads {summary['torch_threads']}")
    for name in MODEL_INT_OPTIONS + MODEL_FLOAT_OPTIONS:
        if getattr(train.model, name) != getattr(default.model, name):
            parts.append(f"--{name.replace('_', '-')} {getattr(train.model, name):g}")
    for name in INT_OPTIONS + FLOAT_OPTIONS:
        if getattr(train, name) != getattr(default, name):
            parts.append(f"--{name.replace('_', '-')} {getattr(train, name):g}")
    if train.model.d_vocab != DEFAULT_VOCAB_SIZE:  # the tokenizer's size; BPE may stop short of --vocab-size
        parts.append(f"--vocab-size {train.model.d_vocab}")
    if train.extra.get("max_corpus_bytes") is not None:
        parts.append(f"--max-corpus-bytes {train.extra['max_corpus_bytes']}")
    if not train.model.use_qk_norm:
        parts.append("--no-qk-norm")
    return " ".join(parts)


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
    # The trainer's order of its layout's variants (baseline, headwise, elementwise; gated, ungated).
    known = [v for v in TRAINABLE_VARIANT_GATES if v in run_of]
    order = known + [v for v in run_of if v not in known]
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


def check_seed_variants(seed_runs: dict[str, Any], variants: list[str]) -> None:
    for seed, (_, _, seed_run_of, _) in seed_runs.items():
        if sorted(seed_run_of) != sorted(variants):
            raise ValueError(
                f"the seed-{seed} runs hold {sorted(seed_run_of)}, the bundled runs {sorted(variants)}; "
                "--seed-run needs every variant at every seed"
            )


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


def trial_summary(run: Path) -> list[dict[str, Any]]:
    """One row per variant of a trial run: its recipe and the last evaluation of its training log
    (the run's own held-out windows), for the card's record of the recipes tried."""
    if (run / CONFIG_FILE).is_file():  # written when a run starts: also there for a run stopped by hand
        config = TrainConfig.from_dict(json.loads((run / CONFIG_FILE).read_text()))
    else:
        config = TrainConfig.from_dict(json.loads((run / "training_summary.json").read_text())["train_config"])
    log = pd.read_csv(run / "training_log.csv")
    rows = []
    # Every layer; None where it has no first-token attention (a hybrid's linear-attention layers).
    attention_layers, layers = logged_layers(log), residual_layers(log)
    for variant, variant_rows in log.groupby("variant", sort=False):
        last = variant_rows.sort_values("step").iloc[-1]
        attention = [
            float(last[f"first_token_attention_L{layer}"]) if layer in attention_layers else None for layer in layers
        ]
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
