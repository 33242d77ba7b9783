"""Forward-pass speed and loading memory of `HookedGatedQwen3`, against Hugging Face Qwen3.

What it measures, for one set of random weights saved once in the released checkpoint format
(a Qwen3 `config.json` with no gate, so that `transformers.Qwen3ForCausalLM` loads the same
folder), all in one process, float32, `torch.no_grad()`, after warm-up:

  forward / HF sdpa          our plain forward (no hooks) over HF with attn_implementation="sdpa"
  run_with_cache / HF eager  our `run_with_cache()` (full cache) over HF eager with
                             output_attentions=True, output_hidden_states=True
  every hook / HF eager      (information) `run_with_hooks` with a no-op hook on every hook point:
                             the hooks' own cost, without keeping the cache's activations
  forward / HF eager         (information) our plain forward over plain HF eager
  headwise / baseline        (information) our forward with a headwise gate over our baseline forward
  elementwise / baseline     (information) the same for the elementwise gate
  load peak RSS / size       peak resident memory added by `load_hooked(folder, dtype=float32)`,
                             measured in a fresh subprocess, over n_params * 4 bytes, for the
                             checkpoint saved in bf16 and in fp32

Timings alternate between the two sides (A B A B ...) and report medians, because a shared
machine is noisy; the ratios are what matter. Each figure is printed with its goal and PASS/MISS
(figures marked "info" have no goal).

Run from the repository root:

    python benchmarks/forward.py                 # the ~100M-parameter model, batch 4 x 256
    python benchmarks/forward.py --size small    # a quick run on a small model
    python benchmarks/forward.py --size 40m      # 42M parameters, batch 4 x 128
    python benchmarks/forward.py --out results.json --repeats 7
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from random_checkpoint import write_random_checkpoint

import gated_interp as gi
from gated_interp.config import GatedQwen3Config

# Model shapes. "small": a quick run (7M parameters); "100m": ~100M parameters (untied 16k
# vocabulary), grouped-query attention. Qwen3's rope_theta and context, unlike the tiny models.
_SMALL = GatedQwen3Config.tiny(d_model=256, d_head=64, d_mlp=768, d_vocab=8000, rope_theta=1_000_000.0, n_ctx=4096)
SIZES: dict[str, dict[str, Any]] = {
    "100m": dict(
        config=replace(_SMALL, d_model=768, n_layers=12, n_heads=12, n_key_value_heads=4, d_mlp=2048, d_vocab=16000),
        batch=4,
        seq=256,
    ),
    "40m": dict(
        config=replace(_SMALL, d_model=512, n_layers=8, n_heads=8, n_key_value_heads=4, d_mlp=1536, d_vocab=16000),
        batch=4,
        seq=128,
    ),
    "small": dict(config=_SMALL, batch=2, seq=128),
}


@dataclass
class Figure:
    name: str
    value: float
    goal: float | None  # an upper bound; None for figures given for information
    detail: str = ""

    @property
    def verdict(self) -> str:
        if self.goal is None:
            return "info"
        return "PASS" if self.value <= self.goal else "MISS"


# ---- checkpoints ------------------------------------------------------------------------------


def model_config(size: str, gate: str = "none") -> GatedQwen3Config:
    return replace(SIZES[size]["config"], gate=gate)


def n_params(folder: Path) -> int:
    from gated_interp.loading.weight_files import WeightFiles

    files = WeightFiles(folder)
    total = 0
    for name in files.names():
        count = 1
        for dim in files.shape(name):
            count *= dim
        total += count
    return total


# ---- timing -----------------------------------------------------------------------------------


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per call of each function, run round-robin (A B A B ...) after `warmup` rounds."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def ratio_figure(name: str, times: dict[str, list[float]], ours: str, theirs: str, goal: float | None) -> Figure:
    a, b = statistics.median(times[ours]), statistics.median(times[theirs])
    # The median of per-round ratios is steadier than a ratio of medians under drifting load.
    per_round = statistics.median(x / y for x, y in zip(times[ours], times[theirs]))
    return Figure(name, per_round, goal, f"{ours} {a * 1e3:.1f} ms, {theirs} {b * 1e3:.1f} ms (medians)")


# ---- speed ------------------------------------------------------------------------------------


def load_hf(folder: Path, attn_implementation: str) -> torch.nn.Module:
    from transformers import Qwen3ForCausalLM

    model = Qwen3ForCausalLM.from_pretrained(str(folder), attn_implementation=attn_implementation, dtype=torch.float32)
    return model.eval()


def speed_figures(size: str, work: Path, repeats: int, warmup: int) -> tuple[list[Figure], dict[str, Any]]:
    spec = SIZES[size]
    folder = write_random_checkpoint(work / "baseline_fp32", model_config(size), torch.float32)
    ours = gi.load_hooked(folder, progress=False)
    hf_sdpa = load_hf(folder, "sdpa")
    hf_eager = load_hf(folder, "eager")
    gated = {
        gate: gi.load_hooked(
            write_random_checkpoint(work / f"{gate}_fp32", model_config(size, gate), torch.float32), progress=False
        )
        for gate in ("headwise", "elementwise")
    }
    tokens = torch.randint(
        0, spec["config"].d_vocab, (spec["batch"], spec["seq"]), generator=torch.Generator().manual_seed(0)
    )

    info: dict[str, Any] = {"n_params": n_params(folder), "batch": spec["batch"], "seq": spec["seq"]}
    with torch.no_grad():
        # The comparison is only meaningful if both sides compute the same thing.
        ours_logits = ours(tokens)
        info["max_abs_logit_diff_vs_hf_sdpa"] = (ours_logits - hf_sdpa(tokens).logits).abs().max().item()
        info["max_abs_logit_diff_vs_hf_eager"] = (ours_logits - hf_eager(tokens).logits).abs().max().item()
        del ours_logits

        figures = []
        times = interleaved(
            {"ours": lambda: ours(tokens), "hf_sdpa": lambda: hf_sdpa(tokens), "hf_eager": lambda: hf_eager(tokens)},
            repeats,
            warmup,
        )
        figures.append(ratio_figure("forward / HF sdpa", times, "ours", "hf_sdpa", 1.05))
        figures.append(ratio_figure("forward / HF eager", times, "ours", "hf_eager", None))

        def ours_cache() -> None:
            ours.run_with_cache(tokens)

        def hf_full() -> None:
            hf_eager(tokens, output_attentions=True, output_hidden_states=True)

        def ours_hooks() -> None:  # every hook fires (eager attention, as the cache needs), nothing is kept
            ours.run_with_hooks(tokens, fwd_hooks=[(lambda name: True, lambda tensor, hook: None)])

        times = interleaved(
            {"ours_cache": ours_cache, "hf_eager_full": hf_full, "ours_hooks": ours_hooks}, repeats, warmup
        )
        figures.append(ratio_figure("run_with_cache / HF eager+outputs", times, "ours_cache", "hf_eager_full", 1.5))
        figures.append(
            ratio_figure("every hook, none kept / HF eager+outputs", times, "ours_hooks", "hf_eager_full", None)
        )

        times = interleaved(
            {
                "baseline": lambda: ours(tokens),
                "headwise": lambda: gated["headwise"](tokens),
                "elementwise": lambda: gated["elementwise"](tokens),
            },
            repeats,
            warmup,
        )
        figures.append(ratio_figure("headwise forward / baseline", times, "headwise", "baseline", None))
        figures.append(ratio_figure("elementwise forward / baseline", times, "elementwise", "baseline", None))
    return figures, info


# ---- loading memory ---------------------------------------------------------------------------

_MEMORY_PROBE = r"""
import json, resource, sys
import torch
import gated_interp as gi
import gated_interp.loading.load  # the package imports lazily: import the loader before measuring

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return None

before = status("VmRSS")
try:  # reset the peak so that it counts from here (Linux >= 4.0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    reset = True
except OSError:
    reset = False
model = gi.load_hooked(sys.argv[1], dtype=torch.float32, progress=False)
peak = status("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
n = sum(p.numel() for p in model.parameters())
print(json.dumps({"before": before, "peak": peak, "after": status("VmRSS"), "n_params": n}))
"""


def load_memory(folder: Path) -> dict[str, int]:
    """RSS figures of `load_hooked(folder, dtype=float32)` in a fresh interpreter."""
    result = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(folder)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"memory probe failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def memory_figures(size: str, work: Path) -> tuple[list[Figure], dict[str, Any]]:
    figures, info = [], {}
    for dtype, label in ((torch.bfloat16, "bf16"), (torch.float32, "fp32")):
        folder = work / f"baseline_{label}"
        if not (folder / "model.safetensors").exists():
            write_random_checkpoint(folder, model_config(size), dtype)
        probe = load_memory(folder)
        loaded_bytes = probe["n_params"] * 4  # loaded as float32
        value = (probe["peak"] - probe["before"]) / loaded_bytes
        file_mib = (folder / "model.safetensors").stat().st_size / 2**20
        detail = (
            f"peak +{(probe['peak'] - probe['before']) / 2**20:.0f} MiB for "
            f"{loaded_bytes / 2**20:.0f} MiB of fp32 weights (file {file_mib:.0f} MiB)"
        )
        figures.append(Figure(f"load_hooked peak RSS / size ({label} file)", value, 1.3, detail))
        info[f"memory_{label}"] = probe
    return figures, info


# ---- report -----------------------------------------------------------------------------------


def print_table(figures: list[Figure]) -> None:
    width = max(len(f.name) for f in figures)
    print(f"{'figure':<{width}}  {'value':>7}  {'goal':>7}  verdict  detail")
    for f in figures:
        goal = f"<= {f.goal:.2f}" if f.goal is not None else "-"
        print(f"{f.name:<{width}}  {f.value:7.3f}  {goal:>7}  {f.verdict:<7}  {f.detail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="100m")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per comparison (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default 2)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--skip-memory", action="store_true", help="leave out the loading-memory figures")
    parser.add_argument("--skip-speed", action="store_true", help="leave out the timing figures")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    spec = SIZES[args.size]
    print(
        f"size={args.size} batch={spec['batch']}x{spec['seq']} fp32, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
        f"{args.repeats} rounds after {args.warmup} warm-up, load average {os.getloadavg()[0]:.1f}"
    )
    figures: list[Figure] = []
    info: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="gated_interp_bench_") as tmp:
        work = Path(tmp)
        if not args.skip_speed:
            found, extra = speed_figures(args.size, work, args.repeats, args.warmup)
            figures += found
            info.update(extra)
            print(
                f"n_params={extra['n_params'] / 1e6:.1f}M; max |logit diff| vs HF sdpa "
                f"{extra['max_abs_logit_diff_vs_hf_sdpa']:.2e}, "
                f"vs HF eager {extra['max_abs_logit_diff_vs_hf_eager']:.2e}"
            )
        if not args.skip_memory:
            found, extra = memory_figures(args.size, work)
            figures += found
            info.update(extra)
    print()
    print_table(figures)
    if args.out:
        payload = {
            "size": args.size,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "load": os.getloadavg(),
            "figures": [{**asdict(f), "verdict": f.verdict} for f in figures],
            "info": info,
        }
        args.out.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
