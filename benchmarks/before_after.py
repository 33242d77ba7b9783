"""Our forward and run_with_cache now against the same at another git revision, in one process.

Separate runs on a shared machine differ by more than most speed-ups do, so a change is measured by
loading both versions of the package side by side: the revision's `gated_interp/` is extracted with
`git archive`, renamed `gated_interp_before` (its imports rewritten), and both load the same folder.
Then, float32, `torch.no_grad()`, after warm-up, interleaved, medians of per-round ratios:
before and after forward and `run_with_cache`, and transformers' forward (sdpa) and its eager
forward with attentions and hidden states for scale. The two versions' logits are compared first.

    python benchmarks/before_after.py FOLDER                      # against main
    python benchmarks/before_after.py FOLDER --rev HEAD~3 --threads 1 --rounds 9 --reverse

FOLDER is any checkpoint folder both versions load, e.g. one written by `hybrid.py --work DIR`
or `random_checkpoint.py`; `--reverse` runs each round in the opposite order (run both: the
order alone can move a ratio by a few percent).
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def extract(rev: str, into: Path) -> None:
    """`gated_interp/` at `rev` as the package `gated_interp_before` under `into`."""
    archive = subprocess.run(["git", "archive", rev, "gated_interp"], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    package = into / "gated_interp_before"
    (into / "gated_interp").rename(package)
    for file in package.rglob("*.py"):
        file.write_text(re.sub(r"\bgated_interp\b", "gated_interp_before", file.read_text()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--rev", default="main", help="the git revision to compare with (default: main)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--pos", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--reverse", action="store_true", help="run each round in the opposite order")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import transformers

    import gated_interp

    with tempfile.TemporaryDirectory(prefix="gated_interp_before_") as tmp:
        extract(args.rev, Path(tmp))
        sys.path.insert(0, tmp)
        before_package = importlib.import_module("gated_interp_before")
        before = before_package.load_hooked(str(args.folder), dtype=torch.float32, progress=False)
    after = gated_interp.load_hooked(str(args.folder), dtype=torch.float32, progress=False)
    hf_sdpa = transformers.AutoModelForCausalLM.from_pretrained(
        args.folder, dtype=torch.float32, attn_implementation="sdpa"
    ).eval()
    hf_eager = transformers.AutoModelForCausalLM.from_pretrained(
        args.folder, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    tokens = torch.randint(0, after.cfg.d_vocab, (args.batch, args.pos), generator=torch.Generator().manual_seed(0))
    fns = {
        "before forward": lambda: before(tokens),
        "after forward": lambda: after(tokens),
        "HF forward": lambda: hf_sdpa(tokens),
        "before run_with_cache": lambda: before.run_with_cache(tokens),
        "after run_with_cache": lambda: after.run_with_cache(tokens),
        "HF all outputs": lambda: hf_eager(tokens, output_attentions=True, output_hidden_states=True),
    }
    if args.reverse:
        fns = dict(reversed(fns.items()))
    with torch.no_grad():
        difference = (before(tokens) - after(tokens)).abs().max().item()
        for fn in fns.values():
            fn()
        times: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(args.rounds):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(times[a], times[b]))

    print(
        f"{args.folder.name}: batch {args.batch} x {args.pos}, {args.rounds} rounds, "
        f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}; "
        f"before ({args.rev}) vs after logits: max |diff| {difference:.1e}"
    )
    for name in fns:
        print(f"  {name:<24} {statistics.median(times[name]) * 1e3:9.1f} ms (median)")
    print(f"  after / before: forward {ratio('after forward', 'before forward'):.3f}, "
          f"run_with_cache {ratio('after run_with_cache', 'before run_with_cache'):.3f}")  # fmt: skip
    for when in ("before", "after"):
        print(f"  {when}: forward / HF forward {ratio(f'{when} forward', 'HF forward'):.3f}, run_with_cache / HF all "
              f"outputs {ratio(f'{when} run_with_cache', 'HF all outputs'):.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
