"""Benchmark: gated_interp's patching sweeps against `transformer_lens.patching`, side by side.

For each model (random headwise-gated Qwen3 checkpoints in the released format, loaded with
`gated_interp.load_hooked`), on random clean/corrupted prompts and a logit-difference metric,
interleaved in one process, `--repeats` rounds:

- z, all positions: `patch_heads(activation="z")` vs `get_act_patch_attn_head_out_all_pos`;
- resid_pre by position: `patch_resid` vs `get_act_patch_resid_pre`;
- z by position: `patch_heads(per_position=True)` vs `get_act_patch_attn_head_out_by_pos`;
- AtP and AtP* (`attribution_patching(method=...)` on z): estimates of the all-position z
  sweep, timed against TransformerLens' exact all-position loop.

TransformerLens' loop runs one full forward per patch, so its time is linear in the patches: when
a sweep has more than `--tl-sample` patches, TransformerLens runs a random sample of them (its own
`generic_activation_patch` with an `index_df`) and its time is scaled up by patches / sample;
the table says so. Values are compared on the patches both ran. The ratio is the median of
per-round ratios (ours / TransformerLens' in the same round), which holds up better than a ratio
of medians on a shared machine. Beside the times: the token-layers (one token through one block)
each needs, from `patch_heads(..., dry_run=True)`: ours as planned, the floor (each copy from its
own layer and position, nothing batched), and TransformerLens'. `--breakdown` adds where our
time goes, stage by stage.

    python benchmarks/patching.py --threads 1 --repeats 3 --out bench.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pandas as pd
import torch
import transformer_lens.patching as tl_patching
from random_checkpoint import write_random_checkpoint

import gated_interp
from gated_interp.config import GatedQwen3Config
from gated_interp.patching import attribution_patching, logit_diff, patch_heads, patch_resid

MODELS = {
    "12-layer": dict(n_layers=12, n_heads=8, n_key_value_heads=4, prompts=4, pos=24),
    "28-layer": dict(n_layers=28, n_heads=16, n_key_value_heads=8, prompts=2, pos=32),
}


def build_model(name: str, folder: Path, seed: int) -> gated_interp.HookedGatedQwen3:
    spec = MODELS[name]
    cfg = GatedQwen3Config.tiny(
        d_model=256,
        n_layers=spec["n_layers"],
        n_heads=spec["n_heads"],
        n_key_value_heads=spec["n_key_value_heads"],
        d_head=32,
        d_mlp=768,
        d_vocab=2048,
        n_ctx=512,
        gate="headwise",
    )
    write_random_checkpoint(folder, cfg, seed=seed)
    return gated_interp.load_hooked(str(folder), device="cpu", progress=False).eval()


def tl_sampled(axes: tuple[str, ...], setter: Callable, sizes: dict[str, int], sample: int, seed: int):
    """TransformerLens' sweep over `axes` (its order), on all patches or a random `sample` of them:
    (run(model, corrupted, cache, metric) -> flat values, index rows [patch, axes], scale up)."""
    grid = torch.cartesian_prod(*(torch.arange(sizes[a]) for a in axes)).reshape(-1, len(axes))
    if len(grid) > sample:
        grid = grid[torch.randperm(len(grid), generator=torch.Generator().manual_seed(seed))[:sample]]
    total = 1
    for a in axes:
        total *= sizes[a]
    index_df = pd.DataFrame(grid.tolist(), columns=list(axes))

    def run(model, corrupted, cache, metric):
        with torch.no_grad():  # TransformerLens' loop does not disable grad itself; be fair to it
            return tl_patching.generic_activation_patch(
                model,
                corrupted,
                cache,
                metric,
                patch_setter=setter,
                activation_name=axes_activation[axes],
                index_df=index_df,
            )

    return run, grid, total / len(grid)


axes_activation = {("layer", "head"): "z", ("layer", "pos"): "resid_pre", ("layer", "pos", "head"): "z"}


def bench_model(name: str, args: argparse.Namespace) -> list[dict]:
    spec = MODELS[name]
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(name, Path(tmp), args.seed)
    n, n_pos, vocab = spec["prompts"], spec["pos"], model.cfg.d_vocab
    gen = torch.Generator().manual_seed(args.seed)
    clean = torch.randint(0, vocab, (n, n_pos), generator=gen)
    corrupted = torch.randint(0, vocab, (n, n_pos), generator=gen)
    answers = torch.randint(0, vocab, (2, n), generator=gen)
    metric = partial(logit_diff, answer_tokens=answers[0], wrong_tokens=answers[1])
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean)
    sizes = {"layer": model.cfg.n_layers, "head": model.cfg.n_heads, "pos": n_pos}

    ours_z = partial(patch_heads, model, corrupted, clean_cache, metric, "z", progress=False)
    ours_resid = partial(patch_resid, model, corrupted, clean_cache, metric, progress=False)
    ours_z_pos = partial(patch_heads, model, corrupted, clean_cache, metric, "z", per_position=True, progress=False)
    tasks = [
        # label, ours, TransformerLens axes and setter, ours' result reordered to TL's axes, planner
        ("z, all positions", ours_z, ("layer", "head"), tl_patching.layer_head_vector_patch_setter, None),
        ("resid_pre by position", ours_resid, ("layer", "pos"), tl_patching.layer_pos_patch_setter, None),
        (
            "z by position",
            ours_z_pos,
            ("layer", "pos", "head"),
            tl_patching.layer_pos_head_vector_patch_setter,
            (0, 2, 1),
        ),
    ]
    atp = partial(attribution_patching, model, clean, corrupted, metric, ["z"])
    rows = []
    for label, ours, axes, setter, permute in tasks:
        tl_run, grid, scale = tl_sampled(axes, setter, sizes, args.tl_sample, args.seed)
        plan = ours(dry_run=True)
        if not rows:
            ours()  # warm-up (allocator, kernels), once per model
        ratios, ours_t, tl_t = [], [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            ours_values = ours()
            ours_t.append(time.perf_counter() - start)
            start = time.perf_counter()
            tl_values = tl_run(model, corrupted, clean_cache, metric)
            tl_t.append((time.perf_counter() - start) * scale)
            ratios.append(ours_t[-1] / tl_t[-1])
        reordered = ours_values if permute is None else ours_values.permute(*permute)
        diff = (reordered[tuple(grid.T)] - tl_values.cpu()).abs().max().item()
        rows.append(
            dict(
                model=name,
                sweep=label,
                patches=plan.n_patches,
                tl_sampled=len(grid) if scale > 1 else None,
                ours_s=statistics.median(ours_t),
                tl_s=statistics.median(tl_t),
                ratio=statistics.median(ratios),
                max_abs_diff=diff,
                forwards=plan.n_forwards,
                token_layers=plan.token_layers,
                floor_token_layers=plan.floor_token_layers,
                tl_token_layers=plan.tl_token_layers,
            )
        )
        if args.breakdown:
            rows[-1]["breakdown_s"] = breakdown(ours)
        print(format_row(rows[-1]), flush=True)
        if label == "z, all positions":
            tl_all_pos = rows[-1]["tl_s"]
    for method in ("atp", "atp*"):
        atp(method=method)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            atp(method=method)
            times.append(time.perf_counter() - start)
        rows.append(
            dict(
                model=name,
                sweep=f"{'AtP' if method == 'atp' else 'AtP*'} (estimates z, all positions)",
                patches=sizes["layer"] * sizes["head"],
                tl_sampled=None,
                ours_s=statistics.median(times),
                tl_s=tl_all_pos,
                ratio=statistics.median(times) / tl_all_pos,
                max_abs_diff=None,
                forwards=None,
                token_layers=None,
                floor_token_layers=None,
                tl_token_layers=None,
            )
        )
        print(format_row(rows[-1]), flush=True)
    return rows


def breakdown(sweep: Callable[[], object]) -> dict[str, float]:
    """Seconds of one run of our `sweep` by stage: the corrupted run; the patched forwards from the
    start layer and position (`runner.run_from`: blocks, final norm, unembedding); each copy's
    logits assembled and the metric called (`_copy_metrics`); the rest (planning, the patched
    layer's own part for z, writing results)."""
    import gated_interp.patching.activation as activation

    spent = {"corrupted_run": 0.0, "forwards": 0.0, "logits_and_metric": 0.0}
    originals = {"corrupted_run": activation.corrupted_run, "run_from": activation.run_from}
    originals["_copy_metrics"] = activation._copy_metrics

    def timed(name: str, fn: Callable) -> Callable:
        def wrapper(*a, **kw):
            start = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                spent[name] += time.perf_counter() - start

        return wrapper

    activation.corrupted_run = timed("corrupted_run", originals["corrupted_run"])
    activation.run_from = timed("forwards", originals["run_from"])
    activation._copy_metrics = timed("logits_and_metric", originals["_copy_metrics"])
    try:
        start = time.perf_counter()
        sweep()
        total = time.perf_counter() - start
    finally:
        for name, fn in originals.items():
            setattr(activation, name, fn)
    return {**spent, "rest": total - sum(spent.values()), "total": total}


def format_row(r: dict) -> str:
    tl = f"{r['tl_s']:.2f} s" + (f" (from {r['tl_sampled']} sampled)" if r["tl_sampled"] else "")
    work = (
        "gradient estimate"
        if r["token_layers"] is None
        else f"{r['token_layers'] / r['tl_token_layers']:.3f} "
        f"(floor {r['floor_token_layers'] / r['tl_token_layers']:.3f})"
    )
    diff = "" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.1e}"
    return (
        f"| {r['model']} | {r['sweep']} | {r['patches']:,} | {r['ours_s']:.2f} s | {tl} | {r['ratio']:.3f} | "
        f"{work} | {diff} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds of each, interleaved")
    parser.add_argument("--tl-sample", type=int, default=96, help="patches TransformerLens runs per sweep at most")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--breakdown", action="store_true", help="time our sweeps' stages once more (printed after the table)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.repeats} rounds")
    print("| model | sweep | patches | ours | transformer_lens | ours / TL | token-layers / TL's | max difference |")
    print("|---|---|---|---|---|---|---|---|")
    rows = [row for name in args.models for row in bench_model(name, args)]
    for row in rows:
        if "breakdown_s" in row:
            stages = ", ".join(f"{k} {v:.2f}" for k, v in row["breakdown_s"].items())
            print(f"{row['model']}, {row['sweep']}: {stages} s")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
