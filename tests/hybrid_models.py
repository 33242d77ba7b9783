"""Tiny random Qwen3.5, Qwen3.5-MoE and Qwen3-Next models built with transformers, for the hybrid tests.

EVERY weight is perturbed (their norm weights start at zero, so untouched norms would hide a missing
`1 + w`), and each model is saved sharded, with an index, as a released folder is. Test files import
`hybrid_checkpoint` and wrap it in a module-scoped fixture (`from hybrid_models import ...`).
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

COMMON = dict(
    vocab_size=64, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
    linear_conv_kernel_dim=4, linear_key_head_dim=8, linear_value_head_dim=8, linear_num_key_heads=2,
    linear_num_value_heads=4, max_position_embeddings=128,
)  # fmt: skip
MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=24)
VISION = dict(
    depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=32, patch_size=4,
    temporal_patch_size=2, spatial_merge_size=1, in_channels=3,
)  # fmt: skip
FAMILIES = ("qwen3_5_text", "qwen3_5", "qwen3_next", "qwen3_5_moe_text")
# Qwen3.5-0.8B's widths (benchmarks/hybrid.py has its full shape) on a few layers and a small
# vocabulary: the head counts and head sizes users meet, at a cost a test can pay (about 70M weights).
QWEN3_5_08B_WIDTHS = dict(
    hidden_size=1024, num_attention_heads=8, num_key_value_heads=2, head_dim=256, intermediate_size=3584,
    linear_num_key_heads=16, linear_num_value_heads=16, linear_key_head_dim=128, linear_value_head_dim=128,
)  # fmt: skip


def build(family: str, **overrides) -> transformers.PreTrainedModel:
    """A random transformers model of `family`; `overrides` change the language model's config keys."""
    common = {**COMMON, **overrides}
    if family == "qwen3_5_text":
        return transformers.Qwen3_5ForCausalLM(transformers.Qwen3_5TextConfig(**{"intermediate_size": 48, **common}))
    if family == "qwen3_5":
        config = transformers.Qwen3_5Config(text_config={**common, "intermediate_size": 48}, vision_config=VISION)
        return transformers.Qwen3_5ForConditionalGeneration(config)
    if family == "qwen3_next":  # layer 2 dense (mlp_only_layers), the others MoE
        config = transformers.Qwen3NextConfig(**common, **MOE, intermediate_size=48, mlp_only_layers=[2])
        return transformers.Qwen3NextForCausalLM(config)
    return transformers.Qwen3_5MoeForCausalLM(transformers.Qwen3_5MoeTextConfig(**common, **MOE))


def hybrid_checkpoint(family: str, folder: Path, seed: int, **overrides) -> transformers.PreTrainedModel:
    """Build `family` (`overrides` as in `build`), perturb every weight, save it to `folder` (sharded,
    with an index); return the transformers model in eval mode with eager attention (so that it
    returns attention patterns)."""
    torch.manual_seed(seed)
    reference = build(family, **overrides)
    with torch.no_grad():
        for param in reference.parameters():  # every weight: vectors (norms, A_log, dt_bias) by 0.2,
            # matrices by their init scale, so that activations stay O(1) and float32 rounding small
            param.add_(torch.randn_like(param) * (0.2 if param.ndim == 1 else 0.02))
    # Sharded, with an index: 40 kB shards (several for the tiny models), or ten shards of a larger model.
    size = sum(param.numel() * param.element_size() for param in reference.parameters())
    reference.save_pretrained(folder, max_shard_size=max(40_000, size // 10))
    reference.config._attn_implementation = "eager"
    if hasattr(reference.config, "text_config"):
        reference.config.text_config._attn_implementation = "eager"
    return reference.eval()


def close(got: torch.Tensor, want: torch.Tensor, what: str, tolerance: float = 1e-5) -> None:
    """Within float32 rounding: |got - want| <= tolerance * max(1, |want|) everywhere."""
    error = ((got - want).abs() / want.abs().clamp(min=1)).max().item()
    assert error <= tolerance, f"{what}: {error:.2e} relative to max(1, |x|)"
