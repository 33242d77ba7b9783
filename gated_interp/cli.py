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
import gc
import os
import sys
import tempfile
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gated_interp.loading.errors import CheckpointError, ReleaseNotAvailable
from gated_interp.loading.resolve import CHECKPOINTS_ENV, SIZES, VARIANTS

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


# ---- argument parsing ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gated-interp",
        description="Attention sinks, massive activations and gates of gated-attention Qwen3 models "
        "(arXiv 2505.06708).",
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_demo(commands)
    _add_sinks(commands)
    _add_info(commands)
    return parser


def _add_model_options(parser: argparse.ArgumentParser, variants: bool = True) -> None:
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
            help=f"variant names ({', '.join(VARIANTS)}) or checkpoint folders; default: all three",
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


def _add_demo(commands: Any) -> None:
    demo = commands.add_parser(
        "demo",
        help="head-averaged attention maps of four layers per variant (the authors' demo)",
        description="For each variant: run the prompt, draw the head-averaged attention maps of four "
        "layers (0, 6, 20, 27 of a 28-layer model, counted from 0 as everywhere in this package: the "
        "paper's 'Layer 1, 7, 21, 28') to {variant}_selected_layer_attention_maps.png, then "
        f"compare the variants' first-token attention by layer ({FIRST_TOKEN_FIGURE}) and largest "
        f"activation by layer ({MASSIVE_FIGURE}).",
    )
    _add_model_options(demo)
    demo.add_argument("--prompt", default=DEMO_PROMPT, help=f"text to run; default: {DEMO_PROMPT!r}")
    demo.add_argument("--out", type=Path, default=Path("figures"), help="folder for the figures; default: figures")
    demo.set_defaults(handler=run_demo)


def _add_sinks(commands: Any) -> None:
    sinks = commands.add_parser(
        "sinks",
        help="table of first_token_attention, sink_rate, max_abs_resid, mean_gate and loss per variant",
        description="Measure every variant on the same prompts: first_token_attention (the paper's F-Attn: "
        "mean attention to the first token), sink_rate (Gu et al., eps 0.3), max_abs_resid (the paper's M-Act: "
        "mean over layers of the largest |resid_post|), mean_gate (mean gate score; '-' in the table and "
        "empty in the CSV when ungated) and "
        "loss (next-token loss).",
    )
    _add_model_options(sinks)
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


def _add_info(commands: Any) -> None:
    info = commands.add_parser(
        "info",
        help="describe a checkpoint from its config and file headers, without building the model",
        description="Print a checkpoint's architecture, gate kind, q_proj layout, parameter count, weight "
        "files and their dtype, read from config.json and the weight files' headers, and the tensors holding "
        "NaN or Inf (each tensor read once, one at a time; the model is not built).",
    )
    info.add_argument("checkpoint", metavar="PATH_OR_VARIANT", help=f"a folder, or one of {', '.join(VARIANTS)}")
    _add_model_options(info, variants=False)
    info.add_argument(
        "--plan",
        action="store_true",
        help="print the device map load_hooked(..., device_map=...) would use and the GiB of weights per device, "
        "from config.json alone (no weights read; a hub id owner/name fetches its config.json only)",
    )
    info.add_argument("--device-map", default="auto", help="with --plan: auto, balanced, sequential, cpu, disk, ...")
    info.add_argument(
        "--max-memory",
        nargs="+",
        default=None,
        metavar="DEVICE=SIZE",
        help="with --plan: memory per device, e.g. 0=75GiB 1=75GiB cpu=200GiB (GPU indices, cpu)",
    )
    info.add_argument("--dtype", choices=DTYPES, default="bfloat16", help="with --plan: dtype of the loaded weights")
    info.set_defaults(handler=run_info)


# ---- shared checks -------------------------------------------------------------------------------


def resolve_variants(names: Sequence[str], size: str) -> list[Variant]:
    """Every variant resolved to a folder before any model is loaded."""
    from gated_interp.loading.resolve import resolve_checkpoint

    variants = []
    for name in names:
        check_name(name)
        folder = resolve_checkpoint(name, size)
        variants.append(Variant(name if name in VARIANTS else folder.name, folder, name in VARIANTS))
    duplicates = [name for name, n in Counter(v.name for v in variants).items() if n > 1]
    if duplicates:
        raise UsageError(f"variant name(s) {duplicates} given twice (folders are named after their last part)")
    return variants


def check_name(name: str) -> None:
    """A variant name, or something meant as a path (an unknown bare name is a usage error)."""
    looks_like_path = Path(name).expanduser().exists() or os.sep in name or name.startswith((".", "~"))
    if name not in VARIANTS and not looks_like_path:
        raise UsageError(f"unknown variant {name!r}: choose from {', '.join(VARIANTS)} or give a checkpoint folder")


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

    return load_folder(variant.folder, device=args.device, dtype=getattr(torch, args.dtype), progress=_bars(args))


def _release(model: Any) -> None:
    """Free a model's memory before the next one loads (1B models are ~7 GB each in float32)."""
    del model
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


def _bars(args: argparse.Namespace) -> bool | None:
    """`progress` for the package's functions: False with --quiet, True with --progress, else None
    (a bar only for long work on a terminal)."""
    return False if args.quiet else True if args.progress else None


def _progress(items: Sequence[Any], desc: str, args: argparse.Namespace) -> Any:
    from gated_interp._progress import progress_bar

    # One step per variant: worth a bar only when each is a released model, not a bundled tiny one.
    long = len(items) > 1 and args.size != "tiny"
    return progress_bar(items, progress=_bars(args), long=long, desc=desc, unit="variant")


# ---- demo ---------------------------------------------------------------------------------------


def run_demo(args: argparse.Namespace) -> int:
    os.environ.setdefault("MPLBACKEND", "Agg")
    out = check_out_dir(args.out)
    if not args.prompt.strip():
        raise UsageError("--prompt is empty")
    variants = resolve_variants(args.variants, args.size)
    first_token, largest, lengths = {}, {}, set()
    written = []
    for variant in _progress(variants, "demo", args):
        model = load_model(variant, args)
        path, first_token[variant.name], largest[variant.name], n_tokens = demo_variant(
            model, variant.name, args.prompt, out
        )
        lengths.add(n_tokens)
        written.append(path)
        _release(model)
    n_tokens = lengths.pop() if len(lengths) == 1 else None  # variants with different tokenizers: no one level
    written += comparison_figures(first_token, largest, out, demo_data(args.prompt, n_tokens), n_tokens)
    for path in written:
        print(path)
    return 0


def demo_variant(model: Any, name: str, prompt: str, out: Path) -> tuple[Path, Any, Any, int]:
    """The variant's attention-map figure, its per-layer first-token attention and largest activation,
    and the prompt's length in its tokens."""
    import matplotlib.pyplot as plt
    import torch

    from gated_interp import analysis, plotting

    if model.tokenizer is None:
        raise CheckpointError(f"{name}: the checkpoint has no tokenizer files, and the demo runs text")
    # Attention maps exist on full-attention layers only (a hybrid model's every 4th): chosen among those.
    full = model.cfg.full_attention_layers
    layers = tuple(full[i] for i in plotting.demo_layers(len(full), zero_based=True))
    with torch.no_grad():
        _, cache = model.run_with_cache(prompt, names_filter=_demo_hooks)
    str_tokens = model.to_str_tokens(prompt)
    if len(str_tokens) < 2:
        raise UsageError(f"--prompt {prompt!r} is a single token; first-token attention needs at least two")
    maps = analysis.head_averaged_patterns(cache, layers)
    fig = plotting.attention_maps(
        maps,
        str_tokens,
        layers=layers,
        title=f"{name}: head-averaged attention",
        data=demo_data(prompt, len(str_tokens)),
    )
    path = plotting.save_demo_figure(fig, out, name)
    plt.close(fig)
    by_layer = analysis.first_token_attention_by_layer(cache).cpu()  # NaN on linear-attention layers
    largest = analysis.max_abs_resid_by_layer(cache).cpu()
    return path, by_layer, largest, len(str_tokens)


def demo_data(prompt: str, n_tokens: int | None = None) -> str:
    """What the demo figures were measured on, for their titles."""
    count = f"{n_tokens} tokens, " if n_tokens is not None else ""
    return f"prompt {prompt!r} ({count}1 sequence)"


def _demo_hooks(name: str) -> bool:
    return name.endswith(("hook_pattern", "hook_resid_post"))


def comparison_figures(
    first_token: dict[str, Any], largest: dict[str, Any], out: Path, data: str, n_tokens: int | None = None
) -> list[Path]:
    """The by-layer comparison figures; with `n_tokens` (the prompt's length) the first-token figure
    draws the level a uniformly attending head gives, the baseline a sink is judged against."""
    import matplotlib.pyplot as plt

    from gated_interp import analysis, plotting

    uniform = (
        (
            analysis.uniform_first_token_attention(n_tokens),
            f"uniform attention, {n_tokens} tokens (mean over queries i of 1/(i+1))",
        )
        if n_tokens is not None
        else None
    )
    figures = (
        (
            FIRST_TOKEN_FIGURE,
            first_token,
            "first_token_attention",
            "first_token_attention by layer: attention to the first token",
            False,
            uniform,
        ),
        (
            MASSIVE_FIGURE,
            largest,
            "max_abs_resid (log scale)",
            "max_abs_resid by layer: largest |resid_post| value",
            True,
            None,
        ),
    )
    paths = []
    for file_name, values, ylabel, title, log_scale, reference in figures:
        fig = plotting.plot_by_layer(
            values, ylabel=ylabel, title=title, log_scale=log_scale, data=data, reference=reference
        )
        fig.savefig(out / file_name, dpi=150, bbox_inches="tight")
        plt.close(fig)
        paths.append(out / file_name)
    return paths


# ---- sinks ---------------------------------------------------------------------------------------


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
    for variant in _progress(variants, "sinks", args):
        model = load_model(variant, args)
        if not _takes_text(model, prompts):
            raise CheckpointError(f"{variant.name}: the checkpoint has no tokenizer files, so it cannot read text")
        frames.append(
            compare_variants({variant.name: model}, prompts, batch_size=args.batch_size, progress=_bars(args))
        )
        _release(model)
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


# ---- info ----------------------------------------------------------------------------------------


def _max_memory(items: list[str] | None) -> dict[int | str, str] | None:
    if items is None:
        return None
    out: dict[int | str, str] = {}
    for item in items:
        device, sep, size = item.partition("=")
        if not sep or not device or not size:
            raise UsageError(f"--max-memory takes DEVICE=SIZE (e.g. 0=75GiB cpu=200GiB), got {item!r}")
        out[int(device) if device.isdigit() else device] = size
    return out


def run_info(args: argparse.Namespace) -> int:
    from gated_interp.loading.resolve import resolve_checkpoint

    name = args.checkpoint
    if args.plan:
        import torch

        from gated_interp.loading.device_map import plan_device_map

        hub_id = name.count("/") == 1 and not Path(name).expanduser().exists()
        if not hub_id:
            check_name(name)
        print(
            plan_device_map(
                name, device_map=args.device_map, max_memory=_max_memory(args.max_memory),
                dtype=getattr(torch, args.dtype), size=args.size,
            )
        )  # fmt: skip
        return 0
    check_name(name)
    folder = resolve_checkpoint(name, args.size)
    from gated_interp.loading.inspect import describe_checkpoint

    for key, value in describe_checkpoint(folder, name if name in VARIANTS else None):
        print(f"{key + ':':<22} {value}")
    return 0


# ---- entry point ---------------------------------------------------------------------------------


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
