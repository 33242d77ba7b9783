"""Benchmark: batched layer × head `z` patching vs `transformer_lens.patching`.

Builds one random gated Qwen3 (released checkpoint format, loaded with `gated_interp.load_hooked`),
random clean/corrupted prompts and a logit-difference metric, then times a full layer × head `z`
sweep with `gated_interp.patching.patch_heads` and with
`transformer_lens.patching.get_act_patch_attn_head_out_all_pos` (one forward per head),
interleaved in one process. Prints median times, their ratio and the max |difference|, then a
per-stage breakdown of our sweep (`--breakdown`, default on): the corrupted prefix run, the
patched transformer blocks, the final norm + unembedding, and the metric calls, with the
block-forward count that any exact sweep starting at the patched layer must do.

    python benchmarks/patching.py --repeats 3 --out bench.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
import transformer_lens.patching as tl_patching
from random_checkpoint import write_random_checkpoint

import gated_interp
from gated_interp.config import GatedQwen3Config
from gated_interp.patching import logit_diff, patch_heads


def build_model(args: argparse.Namespace, folder: Path) -> gated_interp.HookedGatedQwen3:
    cfg = GatedQwen3Config.tiny(
        d_model=args.d_model,
        n_layers=args.layers,
        n_heads=args.heads,
        n_key_value_heads=args.kv_heads,
        d_head=args.d_head,
        d_mlp=args.d_mlp,
        d_vocab=args.vocab,
        n_ctx=512,  # only generation reads it; 512 as the checkpoint always said
        gate=args.gate,
    )
    write_random_checkpoint(folder, cfg, seed=args.seed)
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
        # per-round ratios hold up better than a ratio of medians on a shared machine
        "ratio_median_of_rounds": statistics.median(o / t for o, t in zip(times["ours"], times["transformer_lens"])),
        "max_abs_diff": (results["ours"] - results["transformer_lens"].cpu()).abs().max().item(),
        "metric_range": [results["ours"].min().item(), results["ours"].max().item()],
    }
    print(f"{report['model']}, prompts {args.prompts}x{args.pos}, {report['patches']} head patches")
    print(f"median ours {medians['ours']:.3f} s, transformer_lens {medians['transformer_lens']:.3f} s")
    print(f"speed-up {report['speedup']:.1f}x, max |difference| {report['max_abs_diff']:.2e}")
    print(f"ours / transformer_lens, median of per-round ratios: {report['ratio_median_of_rounds']:.2f} (goal <= 0.25)")
    report["breakdown_s"] = breakdown(model, corrupted, clean_cache, metric, args.batch_size)
    report["breakdown_s"]["transformer_lens_total"] = medians["transformer_lens"]
    work = block_forwards(model.cfg.n_layers, model.cfg.n_heads)
    report["block_forwards"] = work
    print("stage breakdown of ours (s):", {k: round(v, 3) for k, v in report["breakdown_s"].items()})
    print(
        f"block forwards: ours {work['ours']} vs transformer_lens {work['transformer_lens']} "
        f"(ratio {work['ratio']:.2f}: the recomputation any exact sweep must do)"
    )
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


def block_forwards(n_layers: int, n_heads: int) -> dict:
    """Transformer-block forwards per full z sweep: TL runs every block for every head; an exact sweep
    must rerun, for each head of layer l, that layer's MLP and blocks l+1..L-1 (counted as blocks,
    the patched layer's MLP as half a block), and the unembedding once per head in both."""
    theirs = n_layers * n_heads * n_layers
    ours = n_heads * sum(n_layers - layer - 0.5 for layer in range(n_layers))
    return {"ours": ours, "transformer_lens": theirs, "ratio": ours / theirs}


@torch.no_grad()
def breakdown(model, corrupted, clean_cache, metric, batch_size) -> dict:
    """Our sweep's stages timed one by one, in the same chunks as `patch_heads(activation="z")`:
    the corrupted run (resid_pre, resid_mid, z of every block), the patched layer (the head's
    change through W_O, then that block's MLP), the later blocks, final norm + unembedding, metric."""
    from gated_interp.patching.activation import DEFAULT_MAX_TOKENS, _corrupted_states
    from gated_interp.patching.sites import site

    where = site(model, "z")
    n, n_pos = corrupted.shape
    n_layers = model.cfg.n_layers
    batch_size = batch_size or max(1, DEFAULT_MAX_TOKENS // (n * n_pos))
    times = {"corrupted_run": 0.0, "patched_layer": 0.0, "later_blocks": 0.0, "norm_unembed": 0.0, "metric": 0.0}
    start = time.perf_counter()
    _, mids, zs = _corrupted_states(model, corrupted, None)
    times["corrupted_run"] = time.perf_counter() - start
    for layer in range(n_layers):
        clean = where.canonical(clean_cache[where.hook_name(layer)])
        corrupt = where.canonical(zs[layer])
        block = model.blocks[layer]
        for first in range(0, model.cfg.n_heads, batch_size):
            heads = torch.arange(first, min(first + batch_size, model.cfg.n_heads))
            t0 = time.perf_counter()
            delta = clean[heads] - corrupt[heads]
            mid = (mids[layer][None] + torch.einsum("kpnd,kdm->knpm", delta, block.attn.W_O[heads])).flatten(0, 1)
            x = mid + block.mlp(block.ln2(mid))
            t1 = time.perf_counter()
            for later in model.blocks[layer + 1 :]:
                x = later(x, *model.rotary(torch.arange(n_pos)[None].expand(x.shape[0], -1), x.dtype))
            t2 = time.perf_counter()
            logits = model.unembed(model.ln_final(x))
            t3 = time.perf_counter()
            for copy in logits.unflatten(0, (len(heads), n)):
                metric(copy)
            t4 = time.perf_counter()
            times["patched_layer"] += t1 - t0
            times["later_blocks"] += t2 - t1
            times["norm_unembed"] += t3 - t2
            times["metric"] += t4 - t3
    times["total"] = sum(times.values())
    return times


if __name__ == "__main__":
    main()
