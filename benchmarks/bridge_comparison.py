"""What `HookedGatedQwen3` and TransformerLens 4.3's `TransformerBridge` expose on a Qwen3.5 model,
and the time of `run_with_cache` in each.

A random Qwen3.5 text model (`--layers` layers, 3 Gated DeltaNet : 1 full attention; by default
d_model 256, 8 query / 2 key-value heads of 64, DeltaNet 4 key / 8 value heads of 32, vocabulary
4,096; norms perturbed away from zero) and a tiny Qwen3.5-MoE one (for the router) are built with
transformers and saved; both tools load the same folders offline (the bridge with
`TransformerBridge.boot_transformers(folder)`), float32, unfolded. For each quantity the table
gives our hook and every bridge hook whose cached tensor *equals ours* (same values, up to a
reshape or a swap of the pos and head axes; within 1e-4 of max |x|), found by comparing against
every entry of the bridge's cache for that layer, not by name. "none" means no bridge hook holds
the quantity (its nearest-named hook, if any, holds something else: listed with its shape).
Timing: `run_with_cache` of both, interleaved (A B A B ...) after warm-up, median of per-round
ratios (the CPU may be shared).

    python benchmarks/bridge_comparison.py                 # ~1 minute on a CPU
    python benchmarks/bridge_comparison.py --layers 8 --pos 256 --repeats 7
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from forward import interleaved, ratio_figure  # noqa: E402

SHAPE = dict(
    hidden_size=256, num_attention_heads=8, num_key_value_heads=2, head_dim=64, intermediate_size=768,
    linear_num_key_heads=4, linear_num_value_heads=8, linear_key_head_dim=32, linear_value_head_dim=32,
    linear_conv_kernel_dim=4, vocab_size=4096, max_position_embeddings=4096, tie_word_embeddings=False,
)  # fmt: skip
MOE_SHAPE = dict(
    hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
    linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16,
    num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=32,
    vocab_size=256, max_position_embeddings=256,
)  # fmt: skip

# (quantity, our hook with {f} = a full-attention layer / {l} = a linear-attention layer, bridge name hint)
ROWS = [
    ("queries, true head count [batch pos head d_head]", "blocks.{f}.attn.hook_q", "attn.hook_q"),
    ("queries after q_norm", "blocks.{f}.attn.hook_q_normed", "attn.hook_q_normed"),
    ("gate logits", "blocks.{f}.attn.hook_gate_logits", "attn.hook_q_gate"),
    ("sigmoid gate", "blocks.{f}.attn.hook_gate", "attn.hook_gate"),
    ("output before the gate", "blocks.{f}.attn.hook_z_pre_gate", "attn.hook_z"),
    ("gated output (what o_proj reads)", "blocks.{f}.attn.hook_z", "attn.o.hook_in"),
    ("attention pattern", "blocks.{f}.attn.hook_pattern", "attn.hook_pattern"),
    ("DeltaNet q after the conv", "blocks.{l}.linear_attn.hook_q", "linear_attn.hook_q"),
    ("DeltaNet k after the conv", "blocks.{l}.linear_attn.hook_k", "linear_attn.hook_k"),
    ("DeltaNet v after the conv", "blocks.{l}.linear_attn.hook_v", "linear_attn.hook_v"),
    ("DeltaNet beta = sigmoid(b)", "blocks.{l}.linear_attn.hook_beta", "linear_attn.hook_beta"),
    ("DeltaNet log decay g", "blocks.{l}.linear_attn.hook_decay", "linear_attn.hook_log_decay"),
    ("DeltaNet recurrent output", "blocks.{l}.linear_attn.hook_recurrent_out", "linear_attn.hook_recurrence_out"),
    ("DeltaNet output gate z (before silu)", "blocks.{l}.linear_attn.hook_z", "linear_attn.hook_gate_input"),
    ("DeltaNet output gate silu(z)", "blocks.{l}.linear_attn.hook_gate", "linear_attn.hook_gate"),
    ("DeltaNet gated-norm output", "blocks.{l}.linear_attn.hook_out", "linear_attn.hook_linear_attn_out"),
]
MOE_ROWS = [("MoE router logits", "blocks.{l}.mlp.hook_router_logits", "mlp.gate.hook_out")]


def write_models(work: Path, layers: int) -> tuple[Path, Path]:
    import transformers

    torch.manual_seed(0)
    folders = (work / "qwen3_5_text", work / "qwen3_5_moe_text")
    dense = transformers.Qwen3_5ForCausalLM(transformers.Qwen3_5TextConfig(**SHAPE, num_hidden_layers=layers))
    moe = transformers.Qwen3_5MoeForCausalLM(transformers.Qwen3_5MoeTextConfig(**MOE_SHAPE))
    for model, folder in zip((dense, moe), folders):
        with torch.no_grad():  # norms start at zero there: perturb them, as a trained model's are not
            for param in model.parameters():
                if param.ndim == 1:
                    param.add_(torch.randn_like(param) * 0.1)
        model.save_pretrained(folder)
    return folders


def boot_bridge(folder: Path):
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge.boot_transformers(str(folder), device="cpu", dtype=torch.float32).eval()


def _views(tensor: torch.Tensor, shape: torch.Size) -> list[torch.Tensor]:
    """`tensor` read in `shape`: as it is, and with axes 1 and 2 swapped (TransformerLens keeps some
    per-head tensors as [batch, head, pos, ...])."""
    out = []
    if tensor.numel() == shape.numel():
        out.append(tensor.reshape(shape))
        if tensor.ndim >= 3:
            out.append(tensor.transpose(1, 2).reshape(shape))
    return out


def holders(want: torch.Tensor, cache: dict[str, torch.Tensor], layer: int) -> list[str]:
    """The bridge hooks of `layer` whose value equals `want` (1e-4 of max |want|)."""
    scale = max(float(want.abs().max()), 1e-12)
    found = []
    for name, value in cache.items():
        if not name.startswith(f"blocks.{layer}.") or not isinstance(value, torch.Tensor):
            continue
        for view in _views(value.float(), want.shape):
            if float((view - want.float()).abs().max()) <= 1e-4 * scale:
                found.append(f"{name} {list(value.shape)}")
                break
    return found


def compare(ours, bridge, rows, tokens, full: int, linear: int) -> list[tuple[str, str, str]]:
    _, our_cache = ours.run_with_cache(tokens)
    _, bridge_cache = bridge.run_with_cache(tokens)
    bridge_cache = {name: bridge_cache[name] for name in bridge_cache.keys()}
    table = []
    for quantity, our_hook, hint in rows:
        layer = full if "{f}" in our_hook else linear
        name = our_hook.format(f=full, l=linear)
        want = our_cache[name]
        found = holders(want, bridge_cache, layer)
        if not found:
            near = f"blocks.{layer}.{hint}"
            found = ["none"]
            if near in bridge_cache:
                found = [f"none ({near} {list(bridge_cache[near].shape)} holds something else)"]
        table.append((quantity, f"{name} {list(want.shape)}", "; ".join(found)))
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--pos", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args(argv)

    import gated_interp as gi

    dense_folder, moe_folder = write_models(Path(tempfile.mkdtemp(prefix="gated_interp_bridge_")), args.layers)
    ours = gi.load_hooked(str(dense_folder), dtype=torch.float32, device="cpu", progress=False, fold_ln=False)
    bridge = boot_bridge(dense_folder)
    tokens = torch.randint(0, SHAPE["vocab_size"], (args.batch, args.pos), generator=torch.Generator().manual_seed(0))
    full, linear = ours.cfg.full_attention_layers[0], ours.cfg.linear_attention_layers[0]
    with torch.no_grad():
        table = compare(ours, bridge, ROWS, tokens, full, linear)
        ours_moe = gi.load_hooked(str(moe_folder), dtype=torch.float32, device="cpu", progress=False, fold_ln=False)
        bridge_moe = boot_bridge(moe_folder)
        table += compare(ours_moe, bridge_moe, MOE_ROWS, tokens[:, :16] % MOE_SHAPE["vocab_size"], 3, 0)
        logits = ours(tokens)
        bridge_logits = bridge(tokens)
        times = interleaved(
            {"ours": lambda: ours.run_with_cache(tokens), "bridge": lambda: bridge.run_with_cache(tokens)},
            args.repeats,
            args.warmup,
        )
    error = float((logits - bridge_logits).abs().max() / logits.abs().max())
    print(f"{args.layers} layers (full attention: {list(ours.cfg.full_attention_layers)}), batch {args.batch} x "
          f"{args.pos} tokens; logits ours vs bridge: max |diff| / max |logit| = {error:.1e}")  # fmt: skip
    print("\n| quantity | ours | TransformerBridge (hooks holding the same values) |\n|---|---|---|")
    for row in table:
        print("| " + " | ".join(row) + " |")
    figure = ratio_figure("run_with_cache ours / bridge", times, "ours", "bridge", None)
    print(f"\n{figure.name}: {figure.value:.3f} ({figure.detail}, {args.repeats} rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
