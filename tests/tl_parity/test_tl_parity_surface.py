"""The rest of HookedTransformer's surface that libraries call: `from_pretrained`,
`input_to_embed`, `get_residual`, `get_pos_offset`, `move_model_modules_to_device`, `mps`, the
config fields TransformerLens code reads, TransformerLens' key-value cache refused by name, its
2.x q/k-norm hook names explained, and `pos_slice` with an int compared with TransformerLens'
own `HookedRootModule.run_with_cache`."""

from __future__ import annotations

import inspect

import pytest
import torch
from helpers import max_diff, random_tokens
from torch import nn
from transformer_lens import HookedRootModule, TransformerLensKeyValueCache
from transformer_lens.hook_points import HookPoint

import gated_interp
from gated_interp import HookedGatedQwen3

TOL = 1e-5


def test_from_pretrained_is_load_hooked(load_parity):
    """With and without processing; TL's options that cannot hold raise, n_devices > 1 too."""
    folded = HookedGatedQwen3.from_pretrained("gate_headwise", size="tiny", device="cpu")
    raw = HookedGatedQwen3.from_pretrained_no_processing("gate_headwise", size="tiny", device="cpu")
    expected_folded = gated_interp.load_hooked("gate_headwise", size="tiny", device="cpu")
    expected_raw = gated_interp.load_hooked("gate_headwise", size="tiny", device="cpu", fold_ln=False)
    for model, expected in ((folded, expected_folded), (raw, expected_raw)):
        assert isinstance(model, HookedGatedQwen3) and not model.training
        for name, value in expected.state_dict().items():
            assert torch.equal(model.state_dict()[name], value), name
    assert folded.cfg.normalization_type == "RMSPre" and raw.cfg.normalization_type == "RMS"
    with pytest.raises(ValueError, match="RMSNorm does not subtract the mean"):
        HookedGatedQwen3.from_pretrained("gate_headwise", size="tiny", center_writing_weights=True)
    with pytest.raises(ValueError, match="one device"):
        HookedGatedQwen3.from_pretrained("gate_headwise", size="tiny", n_devices=2)


@pytest.mark.parametrize("kind", ["gate_headwise", "random_elementwise"])
@torch.no_grad()
def test_input_to_embed_gives_the_residual_entering_block_0(load_parity, kind):
    model = load_parity(kind)
    tokens = random_tokens(model)
    residual, out_tokens, shortformer, mask = model.input_to_embed(tokens)
    _, cache = model.run_with_cache(tokens)
    assert torch.equal(out_tokens, tokens) and shortformer is None and mask is None
    assert torch.equal(residual, cache["hook_embed"]) and torch.equal(residual, cache["resid_pre", 0])
    assert max_diff(model(residual, start_at_layer=0), model(tokens)) <= TOL
    assert model.get_residual(residual, 0) == (residual, None)


@torch.no_grad()
def test_input_to_embed_of_padded_strings_returns_their_mask(load_parity):
    model = load_parity("gate_headwise")
    prompts = ["the little girl went to the garden", "a dog"]
    residual, tokens, _, mask = model.input_to_embed(prompts)
    assert mask is not None and mask.shape == tokens.shape and bool((mask[1] == 0).any())
    logits = model(residual, start_at_layer=0, attention_mask=mask)
    assert max_diff(logits, model(prompts)) <= TOL


@torch.no_grad()
def test_get_pos_offset_and_devices(load_parity):
    model = load_parity("gate_headwise")
    assert model.get_pos_offset(None, 2) == 0
    cache = model._empty_kv_cache(2)
    model(random_tokens(model, batch=2, pos=5), past_kv_cache=cache)
    assert model.get_pos_offset(cache, 2) == 5
    with pytest.raises(ValueError, match="batch of 2"):
        model.get_pos_offset(cache, 3)
    model.move_model_modules_to_device()
    assert model.cfg.device == "cpu" and model.W_E.device.type == "cpu"
    assert callable(model.mps)


@torch.no_grad()
def test_transformer_lens_kv_cache_is_refused_by_name(load_parity):
    model = load_parity("gate_headwise")
    tl_cache = TransformerLensKeyValueCache.init_cache(model.cfg, "cpu", batch_size=1)
    with pytest.raises(TypeError, match="TransformerLensKeyValueCache.*model.generate"):
        model(random_tokens(model, batch=1), past_kv_cache=tl_cache)
    with pytest.raises(TypeError, match="TransformerLensKeyValueCache"):
        model.get_pos_offset(tl_cache, 1)


def test_config_fields_transformer_lens_reads_have_true_values(load_parity):
    cfg = load_parity("gate_headwise").cfg
    assert cfg.output_logits_soft_cap == -1.0 and cfg.attn_scores_soft_cap == -1.0  # TL's "no cap"
    assert cfg.use_local_attn is False and cfg.num_experts is None and cfg.rmsnorm_uses_offset is False
    assert cfg.seed is None
    assert cfg.init_range == inspect.signature(HookedGatedQwen3.init_weights).parameters["std"].default
    with pytest.raises(AttributeError):
        cfg.output_logits_soft_cap = 30.0  # read-only: setting it would change nothing


@torch.no_grad()
def test_rms_norm_without_offset_is_what_the_model_computes(load_parity):
    """`rmsnorm_uses_offset` is False: q_norm multiplies by w, not 1 + w."""
    model = load_parity("random_headwise")
    _, cache = model.run_with_cache(random_tokens(model))
    q = cache["q", 0].float()
    attn = model.blocks[0].attn
    expected = q / (q.pow(2).mean(-1, keepdim=True) + model.cfg.eps).sqrt() * attn.q_norm.w
    assert max_diff(cache["q_normed", 0], expected) <= TOL


@pytest.mark.parametrize("which", ["q", "k"])
@pytest.mark.parametrize("part", ["normalized", "scale"])
def test_tl2_qk_norm_hook_names_explain_the_hook_to_use(load_parity, which, part):
    """TL 2.x's `attn.q_norm.hook_normalized` is before q_norm.w; ours after: no silent alias."""
    model = load_parity("gate_headwise")
    name = f"blocks.1.attn.{which}_norm.hook_{part}"
    with pytest.raises(KeyError, match=f"blocks.1.attn.hook_{which}_normed"):
        model.run_with_hooks(random_tokens(model), fwd_hooks=[(name, lambda x, hook: x)])
    with pytest.raises(KeyError, match=f"blocks.1.attn.hook_{which}_normed"):
        model.run_with_cache(random_tokens(model), names_filter=[name])  # refused, as any unknown name
    _, cache = model.run_with_cache(random_tokens(model))
    with pytest.raises(KeyError, match=f"{which}_norm.w"):
        cache[name]


class _TLRoot(HookedRootModule):
    """TransformerLens' own run_with_cache, on hooks with our hook_z's and hook_resid_post's shapes."""

    def __init__(self):
        super().__init__()
        self.hook_z = HookPoint()
        self.hook_resid_post = HookPoint()
        self.lin = nn.Identity()
        self.setup()

    def forward(self, z):
        self.hook_resid_post(z.flatten(-2))
        return self.hook_z(z)


@pytest.mark.parametrize("pos_slice", [-1, 2])
@torch.no_grad()
def test_int_pos_slice_keeps_a_position_axis_as_transformer_lens_does(load_parity, pos_slice):
    """TransformerLens' `Slice.unwrap` turns an int into a one-element list, so its caches keep a
    position axis of length 1 (`hook_z` [batch, 1, head, d_head]); ours match its shapes."""
    model = load_parity("gate_headwise")
    tokens = random_tokens(model)
    _, ours = model.run_with_cache(tokens, pos_slice=pos_slice)
    z_full = model.run_with_cache(tokens)[1]["z", 0]
    _, theirs = _TLRoot().run_with_cache(z_full, pos_slice=pos_slice)
    assert ours["z", 0].shape == theirs["hook_z"].shape == (z_full.shape[0], 1, *z_full.shape[2:])
    assert torch.equal(ours["z", 0], theirs["hook_z"])
    assert ours["resid_post", 0].shape[1] == theirs["hook_resid_post"].shape[1] == 1
