"""The bundled tiny hybrid pair (Qwen3.5 layout): it loads offline by name, is the function
transformers computes from the same folder, and its model card's figures are reproduced from the
shipped held-out windows."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import require_bundled

import gated_interp
from gated_interp import CheckpointError
from gated_interp.analysis.streaming import measure
from gated_interp.loading.bundled import TINY_HYBRID_DIR, bundled_metrics, heldout_tokens

HYBRID = gated_interp.HYBRID_VARIANTS


@pytest.fixture(autouse=True, scope="module")
def _bundled_present() -> None:
    require_bundled("tiny_hybrid")  # missing models fail every test here: a packaging regression, never a skip


@pytest.fixture(scope="module")
def measured() -> dict[str, dict]:
    tokens = heldout_tokens("tiny_hybrid")
    results = {}
    for variant in HYBRID:
        model = gated_interp.load_hooked(variant, size="tiny", progress=False)
        results[variant] = {"model": model, **measure(model, tokens, progress=False).as_dict()}
    return results


def _card(variant: str) -> dict:
    return bundled_metrics("tiny_hybrid")["variants"][variant]


def test_the_pair_is_the_qwen3_5_layout_with_and_without_the_gate(measured):
    for variant in HYBRID:
        cfg = measured[variant]["model"].cfg
        assert cfg.layer_types == ("linear_attention",) * 3 + ("full_attention",)
        assert cfg.full_attention_layers == (3,)
        assert cfg.zero_centred_norms and cfg.partial_rotary_factor == 0.25
    assert measured["hybrid_gated"]["model"].cfg.gate == "elementwise"
    assert measured["hybrid_ungated"]["model"].cfg.gate == "none"
    configs = {v: json.loads((TINY_HYBRID_DIR / v / "config.json").read_text()) for v in HYBRID}
    assert {c["model_type"] for c in configs.values()} == {"qwen3_5_text"}
    # Qwen3.5 always gates; the ungated model says so in a key transformers ignores.
    assert "gated_interp_attn_output_gate" not in configs["hybrid_gated"]
    assert configs["hybrid_ungated"]["gated_interp_attn_output_gate"] is False


def test_the_metrics_file_is_strict_json_with_null_where_a_layer_has_no_attention_pattern():
    def refuse(constant: str) -> None:
        raise ValueError(f"metrics.json holds {constant}, which is not JSON")

    saved = json.loads((TINY_HYBRID_DIR / "metrics.json").read_text(), parse_constant=refuse)
    for variant in HYBRID:
        assert saved["variants"][variant]["first_token_attention_by_layer"][:3] == [None, None, None]


@pytest.mark.parametrize("variant", HYBRID)
def test_heldout_loss_matches_the_model_card(measured, variant):
    assert measured[variant]["loss"] == pytest.approx(_card(variant)["loss"], rel=0.01)


@pytest.mark.parametrize("variant", HYBRID)
def test_per_layer_figures_match_the_model_card(measured, variant):
    card = _card(variant)
    attention = measured[variant]["first_token_attention_by_layer"]
    assert [math.isnan(a) for a in attention] == [a is None for a in card["first_token_attention_by_layer"]]
    assert attention[3] == pytest.approx(card["first_token_attention_by_layer"][3], abs=1e-3)
    assert measured[variant]["max_abs_resid_by_layer"] == pytest.approx(card["max_abs_resid_by_layer"], rel=0.01)


@pytest.mark.parametrize("variant", HYBRID)
@pytest.mark.parametrize("quantity", ["first_token_attention", "sink_rate", "max_abs_resid", "mean_gate"])
def test_card_figures_match(measured, variant, quantity):
    card = _card(variant)
    if quantity == "mean_gate" and variant == "hybrid_ungated":
        assert card.get(quantity) is None
        return
    assert measured[variant][quantity] == pytest.approx(card[quantity], rel=0.01, abs=1e-3)


def test_both_bundles_measure_on_the_same_heldout_windows():
    assert torch.equal(heldout_tokens("tiny_hybrid"), heldout_tokens("tiny"))


@pytest.mark.parametrize("variant", HYBRID)
def test_transformers_computes_the_same_function_from_the_bundled_folder(measured, variant):
    """The folder is a plain `qwen3_5_text` checkpoint: transformers' own class, reading it with
    no code of ours, gives our logits (the ungated model as zero gate rows and a doubled o_proj)."""
    from transformers import Qwen3_5ForCausalLM

    reference = Qwen3_5ForCausalLM.from_pretrained(TINY_HYBRID_DIR / variant, dtype=torch.float32).eval()
    tokens = heldout_tokens("tiny_hybrid")[:2, :48]
    with torch.no_grad():
        expected = reference(tokens).logits
        ours = measured[variant]["model"](tokens)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)


def test_the_pair_exists_only_at_size_tiny():
    with pytest.raises(CheckpointError, match=r'load_hooked\("hybrid_gated", size="tiny"\).*Qwen/Qwen3.5-0.8B'):
        gated_interp.load_hooked("hybrid_gated")


def test_the_bundle_is_at_most_15_megabytes():
    total = sum(f.stat().st_size for f in TINY_HYBRID_DIR.rglob("*") if f.is_file())
    assert total <= 15e6
