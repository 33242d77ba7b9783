"""`save_hf` writes Qwen3.5 / Qwen3-Next models back in their family's folder layout: load → save →
load is the identity, and transformers loads the saved folder and gives the same logits (float32
rounding). A vision-language folder is saved as its text-only family (the vision tower is never
loaded). A tied model whose folding changes nothing stays tied."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from hybrid_models import FAMILIES, close, hybrid_checkpoint

from gated_interp.loading.errors import CheckpointError
from gated_interp.loading.load import load_folder
from gated_interp.loading.save import save_hf


@pytest.fixture(scope="module", params=FAMILIES)
def saved(request, tmp_path_factory):
    """(family, transformers model, its folder, our unfolded model saved again to a second folder)."""
    family = request.param
    folder = tmp_path_factory.mktemp(family)
    reference = hybrid_checkpoint(family, folder, seed=20 + FAMILIES.index(family))
    model = load_folder(folder, device="cpu", fold_ln=False, progress=False)
    return family, reference, model, save_hf(model, tmp_path_factory.mktemp(f"{family}_saved"))


@torch.no_grad()
def test_load_save_load_is_the_identity(saved):
    family, _, model, folder = saved
    again = load_folder(folder, device="cpu", fold_ln=False, progress=False)
    want, got = model.state_dict(), again.state_dict()
    assert sorted(got) == sorted(want)
    for name in want:
        assert torch.equal(got[name], want[name]), name
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == {"qwen3_5": "qwen3_5_text"}.get(family, family)
    assert config["layer_types"] == list(model.cfg.layer_types)


@pytest.mark.slow
@torch.no_grad()
def test_transformers_loads_the_saved_folder_with_the_same_logits(saved, tmp_path):
    _, reference, model, folder = saved
    tokens = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(0))
    want = reference(tokens).logits
    close(transformers.AutoModelForCausalLM.from_pretrained(folder).eval()(tokens).logits, want, "saved")
    folded = load_folder(folder, device="cpu", progress=False)  # fold_ln: norms of 1 + 0, W_U untied
    refolded = save_hf(folded, tmp_path / "folded")
    close(transformers.AutoModelForCausalLM.from_pretrained(refolded).eval()(tokens).logits, want, "saved folded")


@torch.no_grad()
def test_a_tied_model_stays_tied_when_folding_changes_nothing(tmp_path):
    hybrid_checkpoint("qwen3_5_text", tmp_path / "tied", seed=0, tie_word_embeddings=True)
    tied = load_folder(tmp_path / "tied", device="cpu", fold_ln=False, progress=False)
    assert tied.unembed.tied and not bool((tied.ln_final.w == 0).all())  # perturbed: folding changes W_U
    assert not load_folder(tmp_path / "tied", device="cpu", progress=False).unembed.tied
    tied.ln_final.w.zero_()  # 1 + 0: the final norm multiplies by one, folding leaves W_U as W_E.T
    folded = save_hf(tied, tmp_path / "identity_norm")
    model = load_folder(folded, device="cpu", progress=False)
    assert model.unembed.tied and model.cfg.tie_word_embeddings
    tokens = torch.randint(0, 64, (1, 7), generator=torch.Generator().manual_seed(1))
    close(model(tokens), tied(tokens), "tied, folded")


def test_a_hub_id_resolves_from_the_hub_cache_without_tokenizer_files(tmp_path, monkeypatch):
    """'Qwen/Qwen3.5-0.8B' is read from a hub-cache layout (offline), and a folder without tokenizer
    files loads for token input."""
    from huggingface_hub import constants

    import gated_interp

    cache, commit = tmp_path / "hub", "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--Qwen--Qwen3.5-0.8B"
    reference = hybrid_checkpoint("qwen3_5", repo / "snapshots" / commit, seed=40)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    # huggingface_hub reads these variables once, at import: patch its constants as well
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    model = gated_interp.load_hooked("Qwen/Qwen3.5-0.8B", device="cpu", progress=False)
    assert model.tokenizer is None
    tokens = torch.randint(0, 64, (1, 6), generator=torch.Generator().manual_seed(2))
    close(model(tokens), reference(tokens).logits, "from the hub cache")
    with pytest.raises(CheckpointError, match=r"'Qwen/Qwen3\.9-none'.*hf download Qwen/Qwen3\.9-none"):
        gated_interp.load_hooked("Qwen/Qwen3.9-none", progress=False)
