"""Speed and loading memory of a Qwen3.5 model in `HookedGatedQwen3`, against transformers' own
`Qwen3_5ForCausalLM` and TransformerLens' `TransformerBridge`.

One random model of Qwen3.5-0.8B's shape (24 layers, d_model 1024, 8 query / 2 key-value heads,
head_dim 256, 3 Gated DeltaNet layers : 1 full-attention layer, DeltaNet 16 key / 16 value heads
of 128, MLP 3584; `--vocab` defaults to the real 248,320) is built with transformers and saved
once; then, in this one process, float32, `torch.no_grad()`, after warm-up, interleaved
(A B C A B C ...), medians of per-round ratios:

  forward / HF forward               our plain forward over transformers' (sdpa) forward     goal <= 1.1
  run_with_cache / HF all outputs    our full run_with_cache over transformers' eager forward with
                                     output_attentions and output_hidden_states              (info)
  run_with_cache / bridge            over TransformerBridge.run_with_cache, if the bridge boots
                                     offline from the local folder (else the reason is printed)  goal <= 1.0
  load peak RSS / size               peak memory added by load_hooked (fp32), in a fresh process,
                                     over the fp32 weights' size                             goal <= 1.3

    python benchmarks/hybrid.py                       # the real shape (a ~0.8B model: minutes on a CPU)
    python benchmarks/hybrid.py --vocab 32000 --pos 128 --repeats 5
    python benchmarks/hybrid.py --vocab 32000 --pos 128 --repeats 7 --threads 1   # steadier on a busy machine
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from forward import Figure, interleaved, load_memory, print_table, ratio_figure  # noqa: E402

SHAPE = dict(
    hidden_size=1024, num_hidden_layers=24, num_attention_heads=8, num_key_value_heads=2, head_dim=256,
    intermediate_size=3584, linear_num_key_heads=16, linear_num_value_heads=16, linear_key_head_dim=128,
    linear_value_head_dim=128, linear_conv_kernel_dim=4, tie_word_embeddings=True, max_position_embeddings=4096,
)  # fmt: skip


def write_model(folder: Path, vocab: int) -> None:
    import transformers

    torch.manual_seed(0)
    config = transformers.Qwen3_5TextConfig(**SHAPE, vocab_size=vocab)
    model = transformers.Qwen3_5ForCausalLM(config)
    with torch.no_grad():  # norms start at zero there: perturb them, as a trained model's are not
        for param in model.parameters():
            if param.ndim == 1:
                param.add_(torch.randn_like(param) * 0.1)
    model.to(torch.bfloat16).save_pretrained(folder)


def boot_bridge(folder: Path):
    """TransformerBridge on the local folder, or the reason it cannot boot."""
    try:
        from transformer_lens.model_bridge import TransformerBridge

        bridge = TransformerBridge.boot_transformers(str(folder), device="cpu", dtype=torch.float32)
        return bridge.eval(), None
    except Exception as error:  # report, do not hide: the figure is then missing with its reason
        return None, f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=248_320)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--pos", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--work", type=Path, default=None, help="folder for the random checkpoint (default: temporary)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import transformers

    import gated_interp as gi

    work = args.work or Path(tempfile.mkdtemp(prefix="gated_interp_hybrid_bench_"))
    folder = work / f"qwen3_5_0.8B_shape_vocab{args.vocab}"
    if not (folder / "config.json").exists():
        start = time.perf_counter()
        write_model(folder, args.vocab)
        print(f"wrote {folder} in {time.perf_counter() - start:.0f} s", flush=True)

    figures: list[Figure] = []
    probe = load_memory(folder)
    loaded = probe["n_params"] * 4
    detail = f"peak +{(probe['peak'] - probe['before']) / 2**20:.0f} MiB for {loaded / 2**20:.0f} MiB of fp32 weights"
    figures.append(
        Figure("load_hooked peak RSS / size (bf16 file)", (probe["peak"] - probe["before"]) / loaded, 1.3, detail)
    )

    ours = gi.load_hooked(str(folder), dtype=torch.float32, device="cpu", progress=False)
    hf_sdpa = transformers.Qwen3_5ForCausalLM.from_pretrained(
        str(folder), dtype=torch.float32, attn_implementation="sdpa"
    ).eval()
    hf_eager = transformers.Qwen3_5ForCausalLM.from_pretrained(
        str(folder), dtype=torch.float32, attn_implementation="eager"
    ).eval()
    bridge, why_not = boot_bridge(folder)
    tokens = torch.randint(0, args.vocab, (args.batch, args.pos), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = hf_sdpa(tokens).logits
        error = ((ours(tokens) - want).abs().max() / want.abs().max()).item()
        print(f"our logits vs transformers': max |diff| / max |logit| = {error:.1e}", flush=True)
        fns = {
            "ours forward": lambda: ours(tokens),
            "HF forward": lambda: hf_sdpa(tokens),
            "ours run_with_cache": lambda: ours.run_with_cache(tokens),
            "HF all outputs": lambda: hf_eager(tokens, output_attentions=True, output_hidden_states=True),
        }
        if bridge is not None:
            fns["bridge run_with_cache"] = lambda: bridge.run_with_cache(tokens)
        times = interleaved(fns, args.repeats, args.warmup)
    figures.append(ratio_figure("forward / HF forward", times, "ours forward", "HF forward", 1.1))
    figures.append(
        ratio_figure("run_with_cache / HF all outputs", times, "ours run_with_cache", "HF all outputs", None)
    )
    if bridge is not None:
        figures.append(
            ratio_figure("run_with_cache / bridge", times, "ours run_with_cache", "bridge run_with_cache", 1.0)
        )
    print(
        f"batch {args.batch} x {args.pos} tokens, vocab {args.vocab}, {probe['n_params'] / 1e6:.0f}M parameters, "
        f"{torch.get_num_threads()} threads, {args.repeats} rounds, load average {os.getloadavg()[0]:.1f}"
    )
    print_table(figures)
    if why_not:
        print(f"TransformerBridge: not timed, it did not boot from {folder}: {why_not}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
