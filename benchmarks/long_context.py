"""Peak memory and time of `compare_variants` at long context: full cache (before) vs streaming.

A random model with the released 1B models' attention shape (28 layers, 16 query heads over 8
key-value heads, q/k norm, headwise gate) at a small width, one sequence of random tokens. Each
point runs in a fresh subprocess, so its peak resident memory (`VmHWM` from /proc/self/status, or
`getrusage` where that is missing: tracemalloc would miss torch's allocations) is its own:

  method=before  what compare_variants did before streaming (replayed here): run_with_cache of every
                 layer's pattern, then measurements from float32 stacks of all layers' patterns
  method=stream  compare_variants(...) (the default): each layer reduced in its hooks, attention
                 to token 0 from queries and keys in chunks, the fused attention kernel kept

For each length the plain forward pass (no hooks) is timed too, and where both methods ran their
values are compared (max |difference| over the five quantities).

    python benchmarks/long_context.py                                   # 512 ... 8192 tokens
    python benchmarks/long_context.py --tokens 512 1024 --cache-up-to 1024
    python benchmarks/long_context.py --device cuda                      # peak = max_memory_allocated
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The released 1B models' attention shape (28 layers, 16 query over 8 key-value heads, headwise
# gate) at a small width; Qwen3's rope_theta, and a context as long as the longest length timed.
SHAPE = dict(
    d_model=256,
    n_layers=28,
    n_heads=16,
    n_key_value_heads=8,
    d_mlp=512,
    rope_theta=1_000_000.0,
    n_ctx=8192,
    gate="headwise",
)
GOALS_GIB = {2048: 2.0, 8192: 8.0}


def peak_rss_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def build_model(folder: Path, device: str):
    from random_checkpoint import write_random_checkpoint

    import gated_interp
    from gated_interp.config import GatedQwen3Config

    write_random_checkpoint(folder, GatedQwen3Config.tiny(**SHAPE), seed=0)
    return gated_interp.load_hooked(str(folder), device=device, progress=False)


def before_streaming(model, tokens) -> dict[str, float]:
    """What compare_variants did before streaming (this code replays it): one run_with_cache of
    every layer's pattern, residual stream and gate, then F-Attn and key importance each from a
    float32 stack of all layers' patterns."""
    import torch

    from gated_interp import analysis

    keep = ("hook_pattern", "hook_resid_post", "attn.hook_gate")
    n_layers = model.cfg.n_layers
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith(keep))
        patterns = torch.stack([cache["pattern", layer].float() for layer in range(n_layers)])
        first_token = float(patterns[..., 1:, 0].mean())  # one sequence, no padding
        del patterns
        patterns = torch.stack([cache["pattern", layer].float() for layer in range(n_layers)])
        importance = patterns[..., 0].mean(-1)[:, 0]  # [layer, head]: queries >= 0 to key 0
        del patterns
        return {
            "first_token_attention": first_token,
            "sink_rate": float((importance > 0.3).float().mean()),
            "max_abs_resid": float(analysis.max_abs_resid_by_layer(cache).mean()),
            "mean_gate": analysis.mean_gate_score(cache),
            "loss": float(model.loss_fn(logits, tokens)),
        }


def worker(method: str, n_tokens: int, device: str) -> dict:
    import torch

    from gated_interp.analysis import compare_variants

    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(Path(tmp), device)
    tokens = torch.randint(0, model.cfg.d_vocab, (1, n_tokens), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model(tokens[:, :64], return_type=None)  # warm-up
        start = time.perf_counter()
        model(tokens, return_type=None)
        forward_s = time.perf_counter() - start
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = peak_rss_bytes()
    start = time.perf_counter()
    try:
        if method == "before":
            row = before_streaming(model, tokens)
        else:
            row = compare_variants({"gate_headwise": model}, tokens, batch_size=1, progress=False).iloc[0]
    except MemoryError as error:
        return {"method": method, "tokens": n_tokens, "refused": str(error)}
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    result = {
        "method": method,
        "tokens": n_tokens,
        "seconds": seconds,
        "forward_s": forward_s,
        "peak_rss_gib": peak_rss_bytes() / 2**30,
        "rss_before_gib": before / 2**30,
        "values": {
            k: float(row[k]) for k in ("first_token_attention", "sink_rate", "max_abs_resid", "mean_gate", "loss")
        },
    }
    if device == "cuda":
        result["peak_cuda_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def run_point(method: str, n_tokens: int, device: str, threads: int | None) -> dict:
    command = [sys.executable, __file__, "--worker", method, str(n_tokens), "--device", device]
    if threads:
        command += ["--threads", str(threads)]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        return {"method": method, "tokens": n_tokens, "failed": done.stderr[-600:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192])
    parser.add_argument("--cache-up-to", type=int, default=2048, help="longest length to try the full cache at")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--before",
        choices=["before"],
        default="before",
        help="the full-cache side: the pre-streaming code (compare_variants no longer has a full-cache path)",
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-stream", action="store_true", help="run only the full-cache side")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "TOKENS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.device)))
        return 0

    results = []
    print(f"{'tokens':>6} {'method':>6} {'peak':>10} {'time':>8} {'forward':>8}  note")
    for n_tokens in args.tokens:
        methods = [args.before] if n_tokens <= args.cache_up_to else []
        methods += [] if args.no_stream else ["stream"]
        points = {m: run_point(m, n_tokens, args.device, args.threads) for m in methods}
        for method, point in points.items():
            results.append(point)
            if "refused" in point or "failed" in point:
                print(f"{n_tokens:>6} {method:>6}  {point.get('refused') or point.get('failed')}")
                continue
            peak = point.get("peak_cuda_gib", point["peak_rss_gib"])
            note = ""
            if method == "stream" and n_tokens in GOALS_GIB:
                goal = GOALS_GIB[n_tokens]
                note = f"goal <= {goal:.0f} GiB: {'PASS' if peak <= goal else 'MISS'}"
            reference = points.get(args.before, {})
            if method == "stream" and "values" in reference:
                # Relative for max |resid| and loss (values of 10-100), absolute for the fractions.
                diffs = {
                    k: abs(v - reference["values"][k])
                    / (abs(reference["values"][k]) if k in ("max_abs_resid", "loss") else 1)
                    for k, v in point["values"].items()
                    if v == v
                }
                point["diff_vs_full_cache"] = diffs
                note += "  |stream - full cache|: " + ", ".join(f"{k} {d:.1e}" for k, d in diffs.items())
            line = f"{n_tokens:>6} {method:>6} {peak:>7.2f} GiB {point['seconds']:>7.1f}s {point['forward_s']:>7.1f}s"
            print(f"{line}  {note}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
