"""`gated-interp demo`: the authors' attention-map figure for each variant, and the comparison
of their first-token attention and largest activation by layer."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from gated_interp.cli.common import (
    DEMO_PROMPT,
    FIRST_TOKEN_FIGURE,
    MASSIVE_FIGURE,
    UsageError,
    add_model_options,
    check_out_dir,
    load_model,
    over_variants,
    release,
    resolve_variants,
)
from gated_interp.loading.errors import CheckpointError


def add_demo(commands: Any) -> None:
    demo = commands.add_parser(
        "demo",
        help="head-averaged attention maps of four layers per variant (the authors' demo)",
        description="For each variant: run the prompt, draw the head-averaged attention maps of four "
        "layers (0, 6, 20, 27 of a 28-layer model, counted from 0 as everywhere in this package: the "
        "paper's 'Layer 1, 7, 21, 28') to {variant}_selected_layer_attention_maps.png, then "
        f"compare the variants' first-token attention by layer ({FIRST_TOKEN_FIGURE}) and largest "
        f"activation by layer ({MASSIVE_FIGURE}).",
    )
    add_model_options(demo)
    demo.add_argument("--prompt", default=DEMO_PROMPT, help=f"text to run; default: {DEMO_PROMPT!r}")
    demo.add_argument("--out", type=Path, default=Path("figures"), help="folder for the figures; default: figures")
    demo.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    os.environ.setdefault("MPLBACKEND", "Agg")
    out = check_out_dir(args.out)
    if not args.prompt.strip():
        raise UsageError("--prompt is empty")
    variants = resolve_variants(args.variants, args.size)
    first_token, largest, lengths = {}, {}, set()
    written = []
    for variant in over_variants(variants, "demo", args):
        model = load_model(variant, args)
        path, first_token[variant.name], largest[variant.name], n_tokens = demo_variant(
            model, variant.name, args.prompt, out
        )
        lengths.add(n_tokens)
        written.append(path)
        release(model)
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
