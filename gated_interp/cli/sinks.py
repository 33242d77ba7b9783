"""`gated-interp sinks`: one table of every variant's first_token_attention, sink_rate,
max_abs_resid, mean_gate and loss on the same prompts."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gated_interp.cli.common import (
    DEFAULT_PROMPTS,
    UsageError,
    Variant,
    add_model_options,
    bars,
    check_csv_path,
    load_model,
    over_variants,
    read_prompts,
    release,
    resolve_variants,
)
from gated_interp.loading.errors import CheckpointError


def add_sinks(commands: Any) -> None:
    sinks = commands.add_parser(
        "sinks",
        help="table of first_token_attention, sink_rate, max_abs_resid, mean_gate and loss per variant",
        description="Measure every variant on the same prompts: first_token_attention (the paper's F-Attn: "
        "mean attention to the first token), sink_rate (Gu et al., eps 0.3), max_abs_resid (the paper's M-Act: "
        "mean over layers of the largest |resid_post|), mean_gate (mean gate score; '-' in the table and "
        "empty in the CSV when ungated) and "
        "loss (next-token loss).",
    )
    add_model_options(sinks)
    sinks.add_argument(
        "--prompts",
        type=Path,
        default=None,
        metavar="FILE",
        help="text file, one prompt per non-empty line; default: for --size tiny the bundled held-out "
        "windows, otherwise a built-in list of English prompts",
    )
    sinks.add_argument("--limit", type=int, default=None, metavar="N", help="use only the first N prompts")
    sinks.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass; default: 8")
    sinks.add_argument("--csv", type=Path, default=None, metavar="PATH", help="also save the table as CSV")
    sinks.set_defaults(handler=run_sinks)


def run_sinks(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be >= 1, got {args.limit}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.csv is not None:
        check_csv_path(args.csv)
    explicit = read_prompts(args.prompts) if args.prompts is not None else None
    variants = resolve_variants(args.variants, args.size)
    prompts, source = choose_prompts(explicit, args.size, variants)
    if args.limit is not None:
        prompts = prompts[: args.limit]
    print(f"prompts: {source} ({len(prompts)} sequences)", file=sys.stderr)
    table = compare_variants_one_at_a_time(variants, prompts, args)
    print(format_table(table))
    if args.csv is not None:
        table.to_csv(args.csv)
        print(f"wrote {args.csv}")
    return 0


def choose_prompts(explicit: list[str] | None, size: str, variants: list[Variant]) -> tuple[Any, str]:
    """The prompts file; else for the bundled tiny models their held-out windows; else built-ins."""
    if explicit is not None:
        return explicit, "prompts file"
    if size == "tiny" and all(v.is_variant_name for v in variants):
        tokens = _heldout_tokens()
        if tokens is not None:
            return tokens, "bundled held-out windows"
    return list(DEFAULT_PROMPTS), "built-in prompts"


def _heldout_tokens() -> Any | None:
    try:
        from gated_interp.loading.bundled import heldout_tokens

        return heldout_tokens()
    except (ImportError, CheckpointError, OSError):
        return None


def compare_variants_one_at_a_time(variants: list[Variant], prompts: Any, args: argparse.Namespace) -> Any:
    """`compare_variants`' table, loading one model at a time (1B models are ~7 GB each)."""
    import pandas as pd

    from gated_interp.analysis import compare_variants

    frames = []
    for variant in over_variants(variants, "sinks", args):
        model = load_model(variant, args)
        if not _takes_text(model, prompts):
            raise CheckpointError(f"{variant.name}: the checkpoint has no tokenizer files, so it cannot read text")
        frames.append(compare_variants({variant.name: model}, prompts, batch_size=args.batch_size, progress=bars(args)))
        release(model)
    table = pd.concat(frames)
    if "attention_layers" in table:  # a hybrid among them: the others measured attention on every layer
        table["attention_layers"] = table["attention_layers"].fillna("all")
    return table


def _takes_text(model: Any, prompts: Any) -> bool:
    return model.tokenizer is not None or not isinstance(prompts, list)


def format_table(table: Any) -> str:
    """The table under its column names (those of the CSV and of `compare_variants`), 4 decimals
    (max_abs_resid 1) and '-' for an absent gate."""
    formatters = {
        column: ("{:.1f}" if column == "max_abs_resid" else "{:.4f}").format
        for column in table.columns
        if column != "attention_layers"  # which layers a hybrid's attention columns come from: text
    }
    return table.to_string(formatters=formatters, na_rep="-")
