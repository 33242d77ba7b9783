"""The bundled tiny models: they load offline, from the source tree and from a built wheel, and
their model card's figures are reproduced from the shipped held-out windows."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from helpers import require_bundled

import gated_interp
from gated_interp.analysis.streaming import measure
from gated_interp.loading.bundled import TINY_DIR, bundled_metrics, heldout_tokens

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True, scope="module")
def _bundled_present() -> None:
    require_bundled()  # missing models fail every test here: a packaging regression, never a skip


@pytest.fixture(scope="module")
def measured() -> dict[str, dict]:
    # The one measurement loop that wrote the card (maintainer/model_card.py calls it too).
    tokens = heldout_tokens()
    results = {}
    for variant in gated_interp.VARIANTS:
        model = gated_interp.load_hooked(variant, size="tiny", progress=False)
        results[variant] = {"model": model, **measure(model, tokens, progress=False).as_dict()}
    return results


@pytest.mark.parametrize("variant", gated_interp.VARIANTS)
def test_heldout_loss_matches_the_model_card(measured, variant):
    card = bundled_metrics()["variants"][variant]
    assert measured[variant]["loss"] == pytest.approx(card["loss"], rel=0.01)


@pytest.mark.parametrize("variant", gated_interp.VARIANTS)
def test_first_token_attention_matches_the_model_card(measured, variant):
    card = bundled_metrics()["variants"][variant]
    assert measured[variant]["first_token_attention_by_layer"] == pytest.approx(
        card["first_token_attention_by_layer"], abs=1e-3
    )


@pytest.mark.parametrize("variant", gated_interp.VARIANTS)
@pytest.mark.parametrize("quantity", ["first_token_attention", "sink_rate", "max_abs_resid", "mean_gate"])
def test_card_figures_match(measured, variant, quantity):
    card = bundled_metrics()["variants"][variant]
    if quantity == "mean_gate" and variant == "baseline":
        assert quantity not in card
        return
    assert measured[variant][quantity] == pytest.approx(card[quantity], rel=0.01, abs=1e-3)


def test_bundled_models_are_the_three_variants_in_released_format(measured):
    gates = {v: measured[v]["model"].cfg.gate for v in gated_interp.VARIANTS}
    assert gates == {"baseline": "none", "gate_headwise": "headwise", "gate_elementwise": "elementwise"}
    for variant in gated_interp.VARIANTS:
        model = measured[variant]["model"]
        assert model.cfg.n_key_value_heads < model.cfg.n_heads  # grouped-query attention, as in the 1B models
        assert model.cfg.use_qk_norm
        assert model.tokenizer is not None


def test_bundle_is_small():
    total = sum(f.stat().st_size for f in TINY_DIR.rglob("*") if f.is_file())
    assert total < 30e6


@pytest.mark.parametrize("variant", gated_interp.VARIANTS)
def test_greedy_generation_is_the_argmax_chain_of_plain_forwards(measured, variant):
    """Greedy decoding with the KV cache, without it, and one full forward per new token taking the
    argmax of the last position: the same tokens. The text is the decoded chain, BOS left out."""
    model, n_new = measured[variant]["model"], 12
    prompt = model.to_tokens("Once upon a time")
    chain = prompt
    with torch.no_grad():
        for _ in range(n_new):
            chain = torch.cat([chain, model(chain)[:, -1].argmax(-1, keepdim=True)], dim=1)
    for use_past_kv_cache in (True, False):
        generated = model.generate(
            prompt, n_new, stop_at_eos=False, do_sample=False, use_past_kv_cache=use_past_kv_cache, verbose=False
        )
        assert torch.equal(generated, chain), f"use_past_kv_cache={use_past_kv_cache}"
    text = model.generate("Once upon a time", n_new, stop_at_eos=False, do_sample=False, verbose=False)
    assert text == model.tokenizer.decode(chain[0].tolist(), skip_special_tokens=True)
    assert text.startswith("Once upon a time") and len(text) > len("Once upon a time")


def test_sampling_with_a_seed_reproduces(measured):
    model = measured["gate_headwise"]["model"]
    prompt = model.to_tokens("Once upon a time")

    def sample(seed: int) -> torch.Tensor:
        return model.generate(prompt, 12, stop_at_eos=False, do_sample=True, seed=seed, verbose=False)

    first = sample(0)
    assert first.shape == (1, prompt.shape[1] + 12) and torch.equal(first[:, : prompt.shape[1]], prompt)
    assert torch.equal(sample(0), first)
    assert not torch.equal(sample(1), first)  # the seed, not a fixed choice, picks the tokens


def _source_copy(destination: Path) -> Path:
    """What a wheel is built from (pyproject.toml, README.md, the package), copied: setuptools
    builds in the source folder (`build/`, `*.egg-info/`), and the checkout must stay clean."""
    destination.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, destination / name)
    shutil.copytree(REPO / "gated_interp", destination / "gated_interp", ignore=shutil.ignore_patterns("__pycache__"))
    return destination


@pytest.mark.slow
def test_loads_from_an_installed_wheel_offline(tmp_path):
    """Build the wheel, install it alone into a folder, and load every variant from there with the
    hub switched off and an empty hub cache: the package data must carry the models."""
    wheel_dir, site = tmp_path / "wheel", tmp_path / "site"
    source = _source_copy(tmp_path / "source")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheel_dir),
            str(source),
        ],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = wheel_dir.glob("gated_interp-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "gated_interp/checkpoints/tiny/gate_headwise/model.safetensors" in names
    assert "gated_interp/checkpoints/tiny_hybrid/hybrid_gated/model.safetensors" in names
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)], check=True
    )
    script = (
        "import gated_interp, sys\n"
        "assert gated_interp.__file__.startswith(sys.argv[1]), gated_interp.__file__\n"
        "for v in gated_interp.VARIANTS + gated_interp.HYBRID_VARIANTS:\n"
        "    m = gated_interp.load_hooked(v, size='tiny', progress=False)\n"
        "    print(v, m.cfg.gate, float(m('Once upon a time there was a king.', return_type='loss')))\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(site),
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "TRANSFORMERS_OFFLINE": "1",
    }
    env.pop("GATED_INTERP_CHECKPOINTS", None)
    result = subprocess.run(
        [sys.executable, "-c", script, str(site)], cwd=tmp_path, env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert [line.split()[:2] for line in result.stdout.splitlines()] == [
        ["baseline", "none"],
        ["gate_headwise", "headwise"],
        ["gate_elementwise", "elementwise"],
        ["hybrid_gated", "elementwise"],
        ["hybrid_ungated", "none"],
    ]
