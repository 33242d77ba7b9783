"""A Qwen3.5 model without the attention-output gate (the trainer's `hybrid_ungated`) saved as a
`qwen3_5_text` folder: the format always gates, so the folder holds zero gate rows (every gate
1/2) and a doubled o_proj, with `gated_interp_attn_output_gate: false`. transformers computes the
same logits from it; loading gives the ungated model back exactly; a folder whose gate rows are not
zero under that flag is refused."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from hybrid_models import close
from safetensors.torch import load_file, save_file

from gated_interp.loading.errors import CheckpointError
from gated_interp.loading.hybrid import UNGATED_KEY
from gated_interp.loading.load import load_folder
from gated_interp.loading.save import save_hf
from gated_interp.model import HookedGatedQwen3
from gated_interp.train.trainer import qwen3_5_architecture


def _ungated(seed: int = 0) -> HookedGatedQwen3:
    cfg = qwen3_5_architecture(d_model=32, n_layers=4, n_heads=4, n_key_value_heads=2, d_head=8, d_mlp=64, d_vocab=50)
    model = HookedGatedQwen3(cfg.__class__(**{**cfg.to_dict(), "gate": "none"})).init_weights(seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # every weight away from its initial value (norm weights start at zero)
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * (0.2 if param.ndim == 1 else 0.02))
    return model.eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = _ungated()
    return model, save_hf(model, tmp_path_factory.mktemp("ungated"))


@torch.no_grad()
def test_load_save_load_is_the_identity_and_says_ungated(saved):
    model, folder = saved
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "qwen3_5_text" and config[UNGATED_KEY] is False
    again = load_folder(folder, device="cpu", fold_ln=False, progress=False)
    assert again.cfg.gate == "none" and again.cfg.layer_types == model.cfg.layer_types
    want, got = model.state_dict(), again.state_dict()
    assert sorted(got) == sorted(want)
    for name in want:
        assert torch.equal(got[name], want[name]), name


@pytest.mark.slow
@torch.no_grad()
def test_transformers_computes_the_same_logits(saved):
    model, folder = saved
    tokens = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(0))
    reference = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    assert type(reference).__name__ == "Qwen3_5ForCausalLM"
    close(reference(tokens).logits, model(tokens), "transformers on the ungated folder")
    weights = load_file(str(folder / "model.safetensors"))
    q_proj = weights["model.layers.3.self_attn.q_proj.weight"].view(4, 2, 8, 32)
    assert not bool(q_proj[:, 1].any())  # the gate rows: zero, every gate 1/2


def test_gate_rows_that_are_not_zero_are_refused(saved, tmp_path):
    _, folder = saved
    for file in folder.iterdir():
        (tmp_path / file.name).write_bytes(file.read_bytes())
    weights = load_file(str(tmp_path / "model.safetensors"))
    weights["model.layers.3.self_attn.q_proj.weight"].view(4, 2, 8, 32)[0, 1, 0, 0] = 0.5
    save_file(weights, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=f"{UNGATED_KEY}: false, but the gate rows of .*q_proj"):
        load_folder(tmp_path, device="cpu", progress=False)
    config = json.loads((tmp_path / "config.json").read_text())
    config[UNGATED_KEY] = "no"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=f"{UNGATED_KEY} must be true or false"):
        load_folder(tmp_path, device="cpu", progress=False)


def test_a_headwise_hybrid_is_refused_by_name(tmp_path):
    model = _ungated()
    model.cfg.gate = "headwise"
    with pytest.raises(CheckpointError, match="gate is 'headwise'"):
        save_hf(model, tmp_path / "headwise")
