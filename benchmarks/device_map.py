"""Host memory of a model loaded with a device map that offloads most of it to disk.

A random Qwen3.5 model (transformers' `Qwen3_5ForCausalLM`, 3 Gated DeltaNet : 1 full-attention
layers) is saved once in float32, sharded (`--shard-mib`, with an index, as released models are).
Then, each in a fresh interpreter, `load_hooked` loads it

  whole        load_hooked(folder)                                          (the model in RAM)
  offloaded    load_hooked(folder, device_map="auto", max_memory={"cpu": a quarter of the model},
               offload_folder=...)                                          (the rest on disk)

and reports the peak resident memory the load added (VmHWM after the load minus VmRSS before it,
Linux /proc/self/status), against the model's size and the largest shard, plus the time of one
forward pass (`--pos` tokens) in each. Peak host memory near one unit (a block or the embedding)
plus what the map keeps on the CPU is the goal: below the model's size.

    python benchmarks/device_map.py                    # ~0.5 GB model: about a minute on a CPU
    python benchmarks/device_map.py --layers 16 --hidden 1536
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

PROBE = r"""
import json, sys, time
import torch
from gated_interp.loading import load_hooked
import accelerate, gated_interp.loading.dispatch, gated_interp.model  # imported before the baseline: not the load

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

folder, mode, cpu_bytes, offload, pos = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
before = status("VmRSS:")
start = time.perf_counter()
if mode == "whole":
    model = load_hooked(folder, progress=False)
else:
    memory = {"cpu": cpu_bytes}
    model = load_hooked(folder, progress=False, device_map="auto", max_memory=memory, offload_folder=offload)
load_s = time.perf_counter() - start
peak = status("VmHWM:")
tokens = torch.randint(0, model.cfg.d_vocab, (1, pos))
with torch.no_grad():
    model(tokens)  # warm-up
    start = time.perf_counter()
    model(tokens)
    forward_s = time.perf_counter() - start
devices = sorted({str(d) for d in getattr(model, "hf_device_map", {"": "cpu"}).values()})
print(json.dumps(dict(before=before, peak=peak, load_s=load_s, forward_s=forward_s, devices=devices)))
"""


def build(folder: Path, layers: int, hidden: int, vocab: int, shard_mib: int) -> None:
    import torch
    import transformers

    config = transformers.Qwen3_5TextConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=2,
        head_dim=128, intermediate_size=3 * hidden, linear_num_key_heads=8, linear_num_value_heads=16,
        linear_key_head_dim=64, linear_value_head_dim=64, tie_word_embeddings=False, max_position_embeddings=4096,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.Qwen3_5ForCausalLM(config).save_pretrained(folder, max_shard_size=f"{shard_mib}MB")


def probe(folder: Path, mode: str, cpu_bytes: int, offload: Path, pos: int) -> dict:
    args = [sys.executable, "-c", PROBE, str(folder), mode, str(cpu_bytes), str(offload), str(pos)]
    result = subprocess.run(args, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"probe {mode} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--shard-mib", type=int, default=100)
    parser.add_argument("--pos", type=int, default=128)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work) / "model"
        build(folder, args.layers, args.hidden, args.vocab, args.shard_mib)
        shards = sorted(folder.glob("*.safetensors"))
        size = sum(p.stat().st_size for p in shards)
        largest = max(p.stat().st_size for p in shards)
        print(
            f"model: {size / 2**20:.0f} MiB of float32 weights in {len(shards)} shards "
            f"(largest {largest / 2**20:.0f} MiB)"
        )
        print(f"{'load':<10} {'peak added':>11} {'/ model':>8} {'/ shard':>8} {'load s':>7} {'forward s':>10}  devices")
        for mode in ("whole", "offloaded"):
            got = probe(folder, mode, size // 4, Path(work) / "offload", args.pos)
            added = got["peak"] - got["before"]
            print(
                f"{mode:<10} {added / 2**20:8.0f} MiB {added / size:8.2f} {added / largest:8.2f} "
                f"{got['load_s']:7.2f} {got['forward_s']:10.3f}  {', '.join(got['devices'])}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
