"""TransformerLens habits on a Qwen3.5 model (3 Gated DeltaNet layers, full attention on layer 3):
per-layer weights of the full-attention layer give what its hooks hold, run_with_hooks and
transformer_lens.patching run over its heads, and the stacked views (`model.W_Q`, ...) that cannot
exist over mixed layers raise, naming `model.blocks[l].attn.W_Q` on the full-attention layers."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import transformer_lens.patching as tl_patching
from hybrid_models import close, hybrid_checkpoint

import gated_interp
from gated_interp.loading.load import load_folder

FULL = 3  # the one full-attention layer of the tiny models


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen3_5_text")
    hybrid_checkpoint("qwen3_5_text", folder, seed=30)
    return load_folder(folder, device="cpu", progress=False)  # fold_ln: ln1 is folded into W_Q, ...


TOKENS = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    ("name", "per_layer"), [(n, n) for n in ("W_Q", "W_K", "W_V", "W_O", "W_G", "b_Q")] + [("OV", "W_V"), ("QK", "W_Q")]
)
def test_stacked_views_over_mixed_layers_raise_naming_the_per_layer_weights(model, name, per_layer):
    with pytest.raises(AttributeError, match=rf"blocks\[l\]\.attn\.{per_layer}\b"):
        getattr(model, name)
    assert not hasattr(model, name)
    with pytest.raises(AttributeError, match=r"full_attention layers \[3\]"):
        getattr(model, name)


def test_the_gate_weights_of_a_model_without_a_gate_say_so():
    baseline = gated_interp.load_hooked("baseline", size="tiny", progress=False)
    with pytest.raises(AttributeError, match="no attention-output gate"):
        getattr(baseline, "W_G")  # noqa: B009 (attribute access is what is tested)


@torch.no_grad()
def test_per_layer_weights_give_the_full_attention_hooks(model):
    _, cache = model.run_with_cache(TOKENS)
    attn, normed = model.blocks[FULL].attn, cache["normalized", FULL, "ln1"]  # fold_ln: ln1.w is 0 (1 + 0)
    close(cache["q", FULL], torch.einsum("bpm,hmd->bphd", normed, attn.W_Q), "q from W_Q")
    close(cache["gate_logits", FULL], torch.einsum("bpm,hmd->bphd", normed, attn.W_G), "gate logits from W_G")
    heads_k = torch.einsum("bpm,hmd->bphd", normed, attn.W_K)[:, :, :: model.cfg.n_groups]
    close(cache["k", FULL], heads_k, "k from W_K (one copy per query head)")
    close(cache["attn_out", FULL], torch.einsum("bphd,hdm->bpm", cache["z", FULL], attn.W_O), "attn_out from W_O")


@torch.no_grad()
def test_run_with_hooks_and_transformer_lens_patching_over_full_attention_heads(model):
    clean, corrupted = TOKENS[:1], TOKENS[1:]
    _, clean_cache = model.run_with_cache(clean)

    def metric(logits):
        return logits[0, -1, 5]

    heads = pd.DataFrame([(FULL, h) for h in range(model.cfg.n_heads)], columns=["layer", "head"])
    patched = tl_patching.generic_activation_patch(
        model, corrupted, clean_cache, metric, tl_patching.layer_head_vector_patch_setter, "z", index_df=heads
    )

    def head_2_from_clean(z, hook):
        z[:, :, 2] = clean_cache[hook.name][:, :, 2]
        return z

    by_hand = model.run_with_hooks(corrupted, fwd_hooks=[(f"blocks.{FULL}.attn.hook_z", head_2_from_clean)])
    close(patched[2], metric(by_hand), "patching head 2 of layer 3")
    assert not torch.allclose(patched[2], metric(model(corrupted)))  # the patch changed something
    with pytest.raises(KeyError, match=r"linear_attention layer.*full_attention layers: \[3\]"):
        tl_patching.get_act_patch_attn_head_out_all_pos(model, corrupted, clean_cache, metric)
