"""The baseline (no gate) model against Hugging Face `transformers.Qwen3ForCausalLM`.

Logits and every hooked activation are compared with HF's intermediates (hidden states, attention
weights, and forward hooks on HF submodules) on random tiny configs.

Tolerance: 1e-4 absolute in float32. Both implementations compute the same float32 arithmetic in a
different order (einsum vs. nn.Linear, fused vs. eager attention), which leaves differences of
~1e-6 on O(1) activations; 1e-4 is loose enough for that and far below any real mistake (a wrong
layout, norm or rotary convention gives differences of order 1).
"""

from __future__ import annotations

import pytest
import torch
from helpers import make_tiny, max_diff
from hf_reference import hf_qwen3

TOL = 1e-4

CONFIGS = {
    "gqa": dict(),  # 4 query heads over 2 kv heads
    "mha_bias": dict(num_key_value_heads=4, qkv_bias=True),
    "mqa_tied_bias": dict(num_key_value_heads=1, tie_word_embeddings=True, qkv_bias=True),
    "small_head_3_layers": dict(head_dim=8, rope_theta=1e6, num_hidden_layers=3, num_attention_heads=8),
}


@pytest.fixture(params=list(CONFIGS), ids=list(CONFIGS))
def pair(request, tmp_path):
    """(our model, HF model, config) with identical random weights."""
    model, cfg, sd = make_tiny(tmp_path / "ckpt", gate="none", seed=3, **CONFIGS[request.param])
    return model, hf_qwen3(cfg, sd), cfg


def _tokens(cfg: dict, batch: int = 2, pos: int = 9, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, cfg["vocab_size"], (batch, pos), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_logits_match_hf(pair):
    model, hf, cfg = pair
    tokens = _tokens(cfg)
    ours = model(tokens)
    theirs = hf(input_ids=tokens).logits
    assert ours.shape == (2, 9, cfg["vocab_size"])
    assert ours.std() > 0.1  # the comparison is not between two near-zero tensors
    assert max_diff(ours, theirs) <= TOL


@torch.no_grad()
def test_every_hook_matches_hf_intermediates(pair):
    model, hf, cfg = pair
    tokens = _tokens(cfg, seed=1)
    b, p = tokens.shape
    h, kv, d = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]

    captured: dict[str, torch.Tensor] = {}
    handles = []

    def out_hook(name):
        def hook(module, args, output):
            captured[name] = (output[0] if isinstance(output, tuple) else output).detach().clone()

        return hook

    def in_hook(name):
        def hook(module, args, output):
            captured[name] = args[0].detach().clone()

        return hook

    for i, layer in enumerate(hf.model.layers):
        attn = layer.self_attn
        for name, module, hook in [
            ("q_proj", attn.q_proj, out_hook),
            ("k_proj", attn.k_proj, out_hook),
            ("v_proj", attn.v_proj, out_hook),
            ("q_norm", attn.q_norm, out_hook),
            ("k_norm", attn.k_norm, out_hook),
            ("o_proj_in", attn.o_proj, in_hook),
            ("self_attn", attn, out_hook),
            ("mlp", layer.mlp, out_hook),
            ("gate_proj", layer.mlp.gate_proj, out_hook),
            ("up_proj", layer.mlp.up_proj, out_hook),
            ("down_proj_in", layer.mlp.down_proj, in_hook),
            ("input_layernorm", layer.input_layernorm, out_hook),
            ("post_attention_layernorm", layer.post_attention_layernorm, out_hook),
        ]:
            handles.append(module.register_forward_hook(hook(f"{i}.{name}")))
    handles.append(hf.model.norm.register_forward_hook(out_hook("norm")))
    try:
        out = hf(input_ids=tokens, output_hidden_states=True, output_attentions=True)
    finally:
        for handle in handles:
            handle.remove()

    logits, cache = model.run_with_cache(tokens)
    assert max_diff(logits, out.logits) <= TOL
    n_layers = cfg["num_hidden_layers"]
    assert len(out.hidden_states) == n_layers + 1
    assert max_diff(cache["hook_embed"], out.hidden_states[0]) <= TOL

    for i in range(n_layers):
        c = f"blocks.{i}."
        checks = {
            # residual stream: hidden_states[i] enters layer i
            "hook_resid_pre": out.hidden_states[i],
            "attn.hook_pattern": out.attentions[i],
            "attn.hook_q": captured[f"{i}.q_proj"].view(b, p, h, d),
            "attn.hook_k": captured[f"{i}.k_proj"].view(b, p, kv, d),
            "attn.hook_v": captured[f"{i}.v_proj"].view(b, p, kv, d),
            "attn.hook_q_normed": captured[f"{i}.q_norm"],
            "attn.hook_k_normed": captured[f"{i}.k_norm"],
            "attn.hook_z": captured[f"{i}.o_proj_in"].view(b, p, h, d),
            "hook_attn_out": captured[f"{i}.self_attn"],
            "hook_mlp_out": captured[f"{i}.mlp"],
            "mlp.hook_pre": captured[f"{i}.gate_proj"],
            "mlp.hook_pre_linear": captured[f"{i}.up_proj"],
            "mlp.hook_post": captured[f"{i}.down_proj_in"],
        }
        if i + 1 < n_layers:
            checks["hook_resid_post"] = out.hidden_states[i + 1]
        for name, expected in checks.items():
            assert max_diff(cache[c + name], expected) <= TOL, name
        # RMSNorm hooks: normalized * w is what HF's norms output (w from HF: ours is folded into
        # the weights that read the norm, as TransformerLens does, and is all ones)
        assert (
            max_diff(
                cache[c + "ln1.hook_normalized"] * hf.model.layers[i].input_layernorm.weight,
                captured[f"{i}.input_layernorm"],
            )
            <= TOL
        )
        assert (
            max_diff(
                cache[c + "ln2.hook_normalized"] * hf.model.layers[i].post_attention_layernorm.weight,
                captured[f"{i}.post_attention_layernorm"],
            )
            <= TOL
        )
        # hook_scale is the RMS divisor: normalized * scale gives back the input
        assert (
            max_diff(cache[c + "ln1.hook_normalized"] * cache[c + "ln1.hook_scale"], cache[c + "hook_resid_pre"]) <= TOL
        )
        assert max_diff(cache[c + "hook_resid_mid"], cache[c + "hook_resid_pre"] + cache[c + "hook_attn_out"]) <= TOL

    # HF's last hidden state is after the final norm; ours is ln_final's (weighted) output.
    final = cache["ln_final.hook_normalized"] * hf.model.norm.weight
    assert max_diff(final, captured["norm"]) <= TOL
    assert max_diff(final, out.hidden_states[-1]) <= TOL
    resid_final = cache[f"blocks.{n_layers - 1}.hook_resid_post"]
    assert max_diff(cache["ln_final.hook_normalized"] * cache["ln_final.hook_scale"], resid_final) <= TOL


@pytest.mark.parametrize("side", ["right", "left"])
@torch.no_grad()
def test_padded_batch_matches_unpadded_and_hf(pair, side):
    """Each padded sequence's logits (at its real positions) equal its own unpadded run, in our
    model and in HF's unpadded run."""
    model, hf, cfg = pair
    gen = torch.Generator().manual_seed(5)
    lengths = [9, 4, 6, 1]
    width = max(lengths)
    tokens = torch.full((len(lengths), width), 7, dtype=torch.long)  # padding id 7 is arbitrary
    mask = torch.zeros_like(tokens)
    seqs = [torch.randint(0, cfg["vocab_size"], (n,), generator=gen) for n in lengths]
    spans = []
    for row, seq in enumerate(seqs):
        span = slice(0, len(seq)) if side == "right" else slice(width - len(seq), width)
        tokens[row, span] = seq
        mask[row, span] = 1
        spans.append(span)
    batched = model(tokens, attention_mask=mask)
    assert torch.isfinite(batched).all()
    for row, seq in enumerate(seqs):
        alone = model(seq[None])[0]
        assert max_diff(batched[row, spans[row]], alone) <= TOL
        assert max_diff(alone, hf(input_ids=seq[None]).logits[0]) <= TOL
