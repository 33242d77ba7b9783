"""`gated-interp`: the command line (also `python -m gated_interp`).

    gated-interp demo  --size tiny --out figures         # the authors' attention-map demo
    gated-interp sinks --size 1B --csv sinks.csv         # first-token attention, sink rate, max |resid|, gate, loss
    gated-interp info  gate_headwise                     # what a checkpoint is, without building it

Variants are `baseline`, `gate_headwise` and `gate_elementwise` (resolved for `--size tiny` to the
bundled models, for `--size 1B` to `$GATED_INTERP_CHECKPOINTS/1B_<variant>` or the Hugging Face
hub), or the path of a checkpoint folder in the released format (named after the folder).

Exit codes: 0 success, 1 a runtime problem (missing or broken checkpoint, a failed run), 2 bad
arguments (unknown variant, unusable --out, missing or empty prompts file).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from gated_interp.cli.common import (
    DEFAULT_PROMPTS,
    DEMO_PROMPT,
    FIRST_TOKEN_FIGURE,
    MASSIVE_FIGURE,
    UsageError,
    Variant,
    resolve_variants,
)
from gated_interp.cli.demo import add_demo, comparison_figures, demo_variant
from gated_interp.cli.info import add_info
from gated_interp.cli.sinks import add_sinks, choose_prompts, compare_variants_one_at_a_time, format_table
from gated_interp.loading.errors import CheckpointError, ReleaseNotAvailable

__all__ = [
    "DEFAULT_PROMPTS",
    "DEMO_PROMPT",
    "FIRST_TOKEN_FIGURE",
    "MASSIVE_FIGURE",
    "UsageError",
    "Variant",
    "build_parser",
    "choose_prompts",
    "compare_variants_one_at_a_time",
    "comparison_figures",
    "demo_variant",
    "format_table",
    "main",
    "resolve_variants",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gated-interp",
        description="Attention sinks, massive activations and gates of gated-attention Qwen3 models "
        "(arXiv 2505.06708).",
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_demo(commands)
    add_sinks(commands)
    add_info(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 runtime problem, 2 bad arguments)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, or argparse's own usage errors (already printed)
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else 2
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            return args.handler(args)
        except UsageError as error:
            return _fail(str(error), 2)
        except ReleaseNotAvailable as error:
            return _fail(error.cli_message(), 1)
        except CheckpointError as error:
            return _fail(str(error), 1)
        except KeyboardInterrupt:
            return _fail("interrupted", 130)
        except Exception as error:  # never a traceback: one line naming the exception
            return _fail(f"{type(error).__name__}: {error}", 1)


def _fail(message: str, code: int) -> int:
    print(f"error: {_one_line(message)}", file=sys.stderr)
    return code


def _one_line(message: str) -> str:
    return " ".join(message.split())


def _show_warning(message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    print(f"warning: {_one_line(str(message))}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
