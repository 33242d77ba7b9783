"""MoE folders whose routed experts are stored fused, as transformers' modules hold them
(`experts.gate_up_proj [expert, 2 d_mlp_expert, d_model]`, `experts.down_proj`): transformers reads
that layout for qwen3_5_moe and qwen3_next; we load it equal to transformers and to the same model
stored per expert, and save it back fused."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import transformers
from hybrid_models import close, hybrid_checkpoint
from safetensors import safe_open
from safetensors.torch import save_file

from gated_interp.loading.load import load_folder
from gated_interp.loading.save import save_hf

MOE_FAMILIES = ("qwen3_5_moe_text", "qwen3_next")


def weight_names(folder) -> set[str]:
    names = set()
    for file in folder.glob("*.safetensors"):
        with safe_open(str(file), "pt") as f:
            names |= set(f.keys())
    return names


@pytest.fixture(scope="module", params=MOE_FAMILIES)
def folders(request, tmp_path_factory):
    """(transformers model, its per-expert folder, the same weights in a fused folder)."""
    family = request.param
    per_expert = tmp_path_factory.mktemp(f"{family}_per_expert")
    reference = hybrid_checkpoint(family, per_expert, seed=50 + MOE_FAMILIES.index(family))
    fused = tmp_path_factory.mktemp(f"{family}_fused")
    # The module's own state dict: transformers' fused experts, under the checkpoint's names.
    state = {name: t.detach().contiguous() for name, t in reference.state_dict().items()}
    save_file(state, str(fused / "model.safetensors"), metadata={"format": "pt"})
    shutil.copy(per_expert / "config.json", fused / "config.json")
    return reference, per_expert, fused


@torch.no_grad()
def test_a_fused_folder_loads_equal_to_transformers_and_to_the_per_expert_folder(folders):
    reference, per_expert, fused = folders
    names = weight_names(fused)
    assert "model.layers.0.mlp.experts.gate_up_proj" in names
    assert not any(".experts.0." in name for name in names)
    tokens = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(0))
    want = reference(tokens).logits
    # The layout is one transformers reads: the fused folder gives its model's logits.
    close(transformers.AutoModelForCausalLM.from_pretrained(fused).eval()(tokens).logits, want, "transformers, fused")
    ours = load_folder(fused, device="cpu", fold_ln=False, progress=False)
    close(ours(tokens), want, "ours, fused")
    from_per_expert = load_folder(per_expert, device="cpu", fold_ln=False, progress=False).state_dict()
    for name, value in ours.state_dict().items():
        assert torch.equal(value, from_per_expert[name]), name


@torch.no_grad()
def test_a_fused_folder_is_saved_fused_and_reloads_the_same(folders, tmp_path):
    reference, per_expert, fused = folders
    model = load_folder(fused, device="cpu", fold_ln=False, progress=False)
    saved = save_hf(model, tmp_path / "saved")
    names = weight_names(saved)
    assert "model.layers.0.mlp.experts.down_proj" in names and not any(".experts.0." in n for n in names)
    assert "fused_experts" not in json.loads((saved / "config.json").read_text())
    again = load_folder(saved, device="cpu", fold_ln=False, progress=False)
    for name, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], value), name
    tokens = torch.randint(0, 64, (1, 7), generator=torch.Generator().manual_seed(1))
    close(transformers.AutoModelForCausalLM.from_pretrained(saved).eval()(tokens).logits, reference(tokens).logits, "")
    # A per-expert folder is still saved per expert.
    per_expert_saved = save_hf(load_folder(per_expert, device="cpu", progress=False), tmp_path / "per_expert")
    assert "model.layers.0.mlp.experts.0.gate_proj.weight" in weight_names(per_expert_saved)
