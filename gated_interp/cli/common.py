"""What the commands share: the variants given, the checks made before any model loads, loading,
releasing and progress."""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gated_interp.loading.resolve import CHECKPOINTS_ENV, HYBRID_VARIANTS, SIZES, VARIANTS

# Every name a command takes for a model: the paper's three and the bundled hybrid pair (tiny only).
MODEL_NAMES = VARIANTS + HYBRID_VARIANTS

DEMO_PROMPT = "Sparse gating mechanism mitigates attention sink."


# Default prompts of `sinks` when no held-out text fits the models: varied register and length.
DEFAULT_PROMPTS = (
    "The quick brown fox jumps over the lazy dog while the farmer watches from the porch.",
    "In 1905, Albert Einstein published four papers that changed our understanding of physics.",
    "Once upon a time, a little girl lived with her grandmother in a small house near the forest.",
    "To install the package, open a terminal, create a virtual environment and run pip install.",
    "The committee will meet on Thursday to discuss the budget for the next fiscal year.",
    "Photosynthesis converts light energy into chemical energy stored in glucose molecules.",
    "She opened the letter slowly, afraid of what it might say, and then began to laugh.",
    "Prices rose by three percent last month, driven mostly by energy and food costs.",
)


DTYPES = ("float32", "bfloat16", "float16")


FIRST_TOKEN_FIGURE = "first_token_attention_by_layer.png"


MASSIVE_FIGURE = "massive_activations_by_layer.png"


class UsageError(Exception):
    """A bad argument: reported as `error: ...` with exit code 2."""


@dataclass(frozen=True)
class Variant:
    """A variant as given on the command line, resolved to its checkpoint folder."""

    name: str
    folder: Path
    is_variant_name: bool  # given as a variant name (not a folder path)


def add_model_options(parser: argparse.ArgumentParser, variants: bool = True) -> None:
    parser.add_argument(
        "--size",
        choices=SIZES,
        default="tiny",
        help="which release a variant name refers to: the bundled 'tiny' models or the released '1B' "
        f"ones (${CHECKPOINTS_ENV}/1B_<variant> or the hub); default: tiny",
    )
    if variants:
        parser.add_argument(
            "--variants",
            nargs="+",
            default=list(VARIANTS),
            metavar="VARIANT",
            help=f"variant names ({', '.join(MODEL_NAMES)}; the hybrid pair with --size tiny only) or checkpoint "
            "folders; default: the paper's three",
        )
        parser.add_argument(
            "--device", default=None, help="torch device, e.g. cpu or cuda:0; default: cuda if available"
        )
        parser.add_argument(
            "--dtype", choices=DTYPES, default="float32", help="dtype to run the models in; default: float32"
        )
        bars = parser.add_mutually_exclusive_group()
        bars.add_argument("--quiet", action="store_true", help="no progress bars")
        bars.add_argument(
            "--progress",
            action="store_true",
            help="progress bars even when output is not a terminal (default: only on a terminal, for long work)",
        )


def resolve_variants(names: Sequence[str], size: str) -> list[Variant]:
    """Every variant resolved to a folder before any model is loaded."""
    from gated_interp.loading.resolve import resolve_checkpoint

    variants = []
    for name in names:
        check_name(name)
        folder = resolve_checkpoint(name, size)
        variants.append(Variant(name if name in MODEL_NAMES else folder.name, folder, name in MODEL_NAMES))
    duplicates = [name for name, n in Counter(v.name for v in variants).items() if n > 1]
    if duplicates:
        raise UsageError(f"variant name(s) {duplicates} given twice (folders are named after their last part)")
    return variants


def check_name(name: str) -> None:
    """A variant name, or something meant as a path (an unknown bare name is a usage error)."""
    looks_like_path = Path(name).expanduser().exists() or os.sep in name or name.startswith((".", "~"))
    if name not in MODEL_NAMES and not looks_like_path:
        raise UsageError(f"unknown variant {name!r}: choose from {', '.join(MODEL_NAMES)} or give a checkpoint folder")


def check_out_dir(out: Path) -> Path:
    """Create `out` and write a temporary file in it, so that a bad --out fails before models load."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as error:
        raise UsageError(f"cannot write figures to {out}: {error.strerror or error}") from error
    return out


def check_csv_path(path: Path) -> Path:
    if path.is_dir():
        raise UsageError(f"--csv {path} is a folder; give a file name")
    check_out_dir(path.parent if str(path.parent) else Path("."))
    return path


def read_prompts(path: Path) -> list[str]:
    if not path.is_file():
        raise UsageError(f"prompts file {path} does not exist" if not path.exists() else f"{path} is not a file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"cannot read prompts file {path}: {error}") from error
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise UsageError(f"prompts file {path} has no prompts: write one prompt per line")
    return prompts


def load_model(variant: Variant, args: argparse.Namespace) -> Any:
    import torch

    from gated_interp.loading.load import load_folder

    return load_folder(variant.folder, device=args.device, dtype=getattr(torch, args.dtype), progress=bars(args))


def release(model: Any) -> None:
    """Free a model's memory before the next one loads (1B models are ~7 GB each in float32)."""
    del model
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


def bars(args: argparse.Namespace) -> bool | None:
    """`progress` for the package's functions: False with --quiet, True with --progress, else None
    (a bar only for long work on a terminal)."""
    return False if args.quiet else True if args.progress else None


def over_variants(items: Sequence[Any], desc: str, args: argparse.Namespace) -> Any:
    from gated_interp._progress import progress_bar

    # One step per variant: worth a bar only when each is a released model, not a bundled tiny one.
    long = len(items) > 1 and args.size != "tiny"
    return progress_bar(items, progress=bars(args), long=long, desc=desc, unit="variant")
