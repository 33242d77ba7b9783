"""Qwen3.5, Qwen3.5-MoE and Qwen3-Next folders load equal to transformers' own modeling code.

Tiny random models of each family are built with transformers, EVERY weight is perturbed (their
norm weights start at zero, so untouched norms would hide a missing `1 + w`), saved (sharded, with
an index), loaded, and compared: logits, the residual stream after every layer, and the gate and
pattern of every full-attention layer, within float32 rounding (<= 1e-5 relative to max(1, |x|)).
Padded batches (left and right) give each row what it gets alone.
"""

from __future__ import annotations

import pytest
import torch
from hybrid_models import FAMILIES, close, hybrid_checkpoint

from gated_interp.loading.load import load_folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """family → (perturbed transformers model in eval mode, eager attention; its saved folder)."""
    out = {}
    for i, family in enumerate(FAMILIES):
        folder = tmp_path_factory.mktemp(family)
        out[family] = (hybrid_checkpoint(family, folder, seed=i), folder)
    return out


def _reference_run(reference, tokens):
    """Logits, each layer's output and each full-attention layer's gate and pattern, from transformers."""
    text = reference.model.language_model if hasattr(reference.model, "language_model") else reference.model
    layer_out, gates, handles = {}, {}, []
    for i, layer in enumerate(text.layers):
        handles.append(layer.register_forward_hook(lambda m, a, out, i=i: layer_out.__setitem__(i, out)))
        if hasattr(layer, "self_attn"):
            d = layer.self_attn.head_dim

            def keep_gate(m, a, out, i=i, d=d):  # transformers' own split of q_proj's output
                gates[i] = torch.sigmoid(out.view(*out.shape[:2], -1, 2 * d).chunk(2, dim=-1)[1])

            handles.append(layer.self_attn.q_proj.register_forward_hook(keep_gate))
    try:
        output = reference(tokens, output_attentions=True)
    finally:
        for handle in handles:
            handle.remove()
    full = [i for i, layer in enumerate(text.layers) if hasattr(layer, "self_attn")]
    patterns = dict(zip(full, [a for a in output.attentions if a is not None]))
    return output.logits, layer_out, gates, patterns


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_equals_transformers_on_logits_residuals_gates_and_patterns(folders, family):
    reference, folder = folders[family]
    model = load_folder(folder, device="cpu", fold_ln=False, progress=False)
    tokens = torch.randint(0, 64, (2, 11), generator=torch.Generator().manual_seed(0))
    want_logits, layer_out, gates, patterns = _reference_run(reference, tokens)
    logits, cache = model.run_with_cache(tokens)
    close(logits, want_logits, "logits")
    for layer in range(model.cfg.n_layers):
        close(cache["resid_post", layer], layer_out[layer], f"resid_post {layer}")
    assert sorted(gates) == sorted(patterns) == list(model.cfg.full_attention_layers)
    for layer in model.cfg.full_attention_layers:
        close(cache["gate", layer], gates[layer], f"gate {layer}")
        close(cache["pattern", layer], patterns[layer], f"pattern {layer}")
    folded = load_folder(folder, device="cpu", fold_ln=True, progress=False)
    close(folded(tokens), want_logits, "logits with fold_ln")
    assert all(bool((block.ln1.w == 0).all()) for block in folded.blocks)  # 1 + 0: norms that multiply by one


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen3_5_text", "qwen3_next"])
@pytest.mark.parametrize("side", ["left", "right"])
@torch.no_grad()
def test_padded_batch_gives_each_row_its_own_values(folders, family, side):
    model = load_folder(folders[family][1], device="cpu", fold_ln=False, progress=False)
    short, long = torch.randint(0, 64, (1, 6)), torch.randint(0, 64, (1, 10))
    pad = torch.zeros(1, 4, dtype=torch.long)
    padded_short = torch.cat([pad, short] if side == "left" else [short, pad], dim=1)
    tokens, mask = torch.cat([padded_short, long]), torch.ones(2, 10, dtype=torch.long)
    if side == "left":
        mask[0, :4] = 0
    else:
        mask[0, 6:] = 0
    batch_logits = model(tokens, attention_mask=mask)
    real = slice(4, 10) if side == "left" else slice(0, 6)
    close(batch_logits[0, real], model(short)[0], "padded row")
    close(batch_logits[1], model(long)[0], "unpadded row")


@torch.no_grad()
def test_bf16_load_and_vision_tower_said_once(folders, caplog):
    reference, folder = folders["qwen3_5"]
    with caplog.at_level("WARNING"):
        model = load_folder(folder, device="cpu", dtype=torch.bfloat16, fold_ln=False, progress=False)
    assert sum("vision tower" in r.message for r in caplog.records) == 1
    assert model.W_E.dtype == torch.bfloat16
    tokens = torch.randint(0, 64, (1, 8), generator=torch.Generator().manual_seed(1))
    want = reference(tokens).logits
    assert ((model(tokens).float() - want).abs().max() / want.abs().max()).item() < 0.1  # bf16 rounding


def test_linear_layer_has_no_gate_and_says_where_the_gates_are(folders):
    model = load_folder(folders["qwen3_5_text"][1], device="cpu", fold_ln=False, progress=False)
    _, cache = model.run_with_cache(torch.randint(0, 64, (1, 5)))
    assert model.cfg.layer_types == ("linear_attention",) * 3 + ("full_attention",)
    with pytest.raises(KeyError, match=r"linear_attention layer.*full_attention layers: \[3\]"):
        cache["gate", 0]
