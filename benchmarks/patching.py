"""Benchmark: batched layer × head `z` patching vs `transformer_lens.patching`.

Builds one random gated Qwen3 (released checkpoint format, loaded with `gated_interp.load_hooked`),
random clean/corrupted prompts and a logit-difference metric, then times a full layer × head `z`
sweep with `gated_interp.patching.patch_heads` and with
`transformer_lens.patching.get_act_patch_attn_head_out_all_pos` (one forward per head),
interleaved in one process. Prints median times, their ratio and the max |difference|.

    python benchmarks/patching.py --repeats 3 --out bench.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
import transformer_lens.patching as tl_patching
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference import random_released_checkpoint, tiny_config  # noqa: E402

import gated_interp  # noqa: E402
from gated_interp.patching import logit_diff, patch_heads  # noqa: E402


def build_model(args: argparse.Namespace, folder: Path) -> gated_interp.HookedGatedQwen3:
    config = tiny_config(
        hidden_size=args.d_model,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        head_dim=args.d_head,
        intermediate_size=args.d_mlp,
        vocab_size=args.vocab,
        headwise_attn_output_gate=args.gate == "headwise",
        elementwise_attn_output_gate=args.gate == "elementwise",
    )
    state_dict = random_released_checkpoint(config, seed=args.seed)
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))
    return gated_interp.load_hooked(str(folder), device="cpu", progress=False).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--d-head", type=int, default=32)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--d-mlp", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--gate", choices=("none", "headwise", "elementwise"), default="headwise")
    parser.add_argument("--prompts", type=int, default=8, help="prompts in the batch")
    parser.add_argument("--pos", type=int, default=32, help="tokens per prompt")
    parser.add_argument("--batch-size", type=int, default=None, help="patches per forward (ours); default auto")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each, interleaved")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(args, Path(tmp))
    gen = torch.Generator().manual_seed(args.seed)
    clean = torch.randint(0, args.vocab, (args.prompts, args.pos), generator=gen)
    corrupted = torch.randint(0, args.vocab, (args.prompts, args.pos), generator=gen)
    answers = torch.randint(0, args.vocab, (2, args.prompts), generator=gen)
    metric = partial(logit_diff, answer_tokens=answers[0], wrong_tokens=answers[1])
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean)

    def ours() -> torch.Tensor:
        return patch_heads(model, corrupted, clean_cache, metric, "z", batch_size=args.batch_size, progress=False)

    def theirs() -> torch.Tensor:
        with torch.no_grad():  # TransformerLens' loop does not disable grad itself; be fair to it
            return tl_patching.get_act_patch_attn_head_out_all_pos(model, corrupted, clean_cache, metric)

    ours()  # warm-up (allocator, kernels)
    times: dict[str, list[float]] = {"ours": [], "transformer_lens": []}
    results = {}
    for _ in range(args.repeats):
        for name, fn in (("ours", ours), ("transformer_lens", theirs)):
            start = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - start)

    medians = {name: statistics.median(ts) for name, ts in times.items()}
    report = {
        "model": repr(model),
        "prompts": [args.prompts, args.pos],
        "patches": model.cfg.n_layers * model.cfg.n_heads,
        "torch_threads": torch.get_num_threads(),
        "times_s": times,
        "median_s": medians,
        "speedup": medians["transformer_lens"] / medians["ours"],
        "max_abs_diff": (results["ours"] - results["transformer_lens"].cpu()).abs().max().item(),
        "metric_range": [results["ours"].min().item(), results["ours"].max().item()],
    }
    print(f"{report['model']}, prompts {args.prompts}x{args.pos}, {report['patches']} head patches")
    print(f"median ours {medians['ours']:.3f} s, transformer_lens {medians['transformer_lens']:.3f} s")
    print(f"speed-up {report['speedup']:.1f}x, max |difference| {report['max_abs_diff']:.2e}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
