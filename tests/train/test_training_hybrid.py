"""`--layout qwen3_5`: the tiny recipe in Qwen3.5's hybrid layout, hybrid_gated beside hybrid_ungated,
saved as Qwen3.5 text folders that load_hooked and transformers load with equal logits."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import transformers
from hybrid_models import close
from training_corpus import TINY_ARGS

import gated_interp
from gated_interp.train.__main__ import main as train_main
from gated_interp.train.trainer import TrainConfig, build_models, load_train_state, qwen3_5_architecture

HYBRID = ["--layout", "qwen3_5", "--n-layers", "4"]  # after TINY_ARGS: its --n-layers 2 has no full layer


def _rows(run):
    with open(run / "training_log.csv") as file:
        return list(csv.DictReader(file))


def test_the_pair_shares_every_weight_but_the_gate():
    train = TrainConfig(
        variants=("hybrid_gated", "hybrid_ungated"),
        model=qwen3_5_architecture(d_model=32, n_layers=4, n_heads=4, n_key_value_heads=2, d_head=8, d_mlp=64),
    )
    models = build_models(train, vocab_size=50, tokenizer=None)
    gated, ungated = (dict(models[v].named_parameters()) for v in ("hybrid_gated", "hybrid_ungated"))
    assert set(gated) - set(ungated) == {"blocks.3.attn.W_G"} and set(ungated) <= set(gated)
    assert all(torch.equal(gated[name], ungated[name]) for name in ungated)
    cfg = models["hybrid_gated"].cfg
    assert cfg.layer_types == ("linear_attention",) * 3 + ("full_attention",)
    assert (cfg.gate, cfg.gate_layout, cfg.partial_rotary_factor, cfg.zero_centred_norms) == (
        "elementwise", "per_head", 0.25, True,
    )  # fmt: skip
    assert models["hybrid_ungated"].cfg.gate == "none"
    assert TrainConfig.from_dict(json.loads(json.dumps(train.to_dict()))) == train


def test_wrong_layout_variants_and_sizes_are_clear_errors(corpus, tmp_path, capsys):
    base = ["--corpus", str(corpus), "--out", str(tmp_path / "run")] + TINY_ARGS
    assert train_main(base + ["--variants", "hybrid_gated"]) == 2
    assert "--layout qwen3_5" in capsys.readouterr().err
    assert train_main(base + ["--layout", "qwen3_5", "--variants", "baseline"]) == 2
    assert "hybrid_gated" in capsys.readouterr().err
    assert train_main(base + ["--layout", "qwen3_5"]) == 2  # TINY_ARGS' 2 layers: no full-attention layer
    assert "n_layers >= 4" in capsys.readouterr().err
    assert train_main(base + HYBRID + ["--no-qk-norm"]) == 2
    assert "--no-qk-norm" in capsys.readouterr().err


@pytest.mark.slow
def test_a_hybrid_run_logs_the_full_attention_layers_and_saves_qwen3_5_folders(corpus, tmp_path):
    out = tmp_path / "run"
    args = ["--corpus", str(corpus), "--out", str(out), "--tokens", "1024", "--eval-interval", "2"]
    assert train_main(args + TINY_ARGS + HYBRID) == 0

    rows = _rows(out)
    assert {r["variant"] for r in rows} == {"hybrid_gated", "hybrid_ungated"}
    assert {int(r["step"]) for r in rows} == {0, 2, 4}
    columns = [c for c in rows[0] if c.startswith(("first_token_attention", "max_abs_resid"))]
    assert columns == ["first_token_attention_L3"] + [f"max_abs_resid_L{layer}" for layer in range(4)]
    for row in rows:
        assert 0 < float(row["first_token_attention_L3"]) <= 1
    first, last = (float(rows[i]["val_loss"]) for i in (0, -1))
    assert last < first

    tokens = torch.randint(0, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    for variant, gate in [("hybrid_gated", "elementwise"), ("hybrid_ungated", "none")]:
        assert json.loads((out / variant / "config.json").read_text())["model_type"] == "qwen3_5_text"
        ours = gated_interp.load_hooked(out / variant, progress=False)
        assert ours.cfg.gate == gate and ours.cfg.layer_types[3] == "full_attention"
        assert ours.tokenizer.bos_token == "<|doc|>"
        reference = transformers.AutoModelForCausalLM.from_pretrained(out / variant, dtype=torch.float32).eval()
        assert type(reference).__name__ == "Qwen3_5ForCausalLM"
        with torch.no_grad():
            close(ours(tokens), reference(tokens).logits, f"{variant}: load_hooked vs transformers")


@pytest.mark.slow
def test_a_resumed_hybrid_run_equals_an_uninterrupted_one(corpus, tmp_path):
    common = ["--corpus", str(corpus), "--tokens", "1024", "--eval-interval", "2", "--save-interval", "2"]
    common += TINY_ARGS + HYBRID
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert train_main(common + ["--out", str(whole)]) == 0
    assert train_main(common + ["--out", str(parts), "--stop-after-steps", "2"]) == 0
    assert train_main(["--corpus", str(corpus), "--resume", str(parts), "--threads", "1"]) == 0

    a, b = load_train_state(whole), load_train_state(parts)
    assert a["step"] == b["step"] == 4
    for variant in ("hybrid_gated", "hybrid_ungated"):
        for name, tensor in a["models"][variant].items():
            torch.testing.assert_close(b["models"][variant][name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    for x, y in zip(_rows(whole), _rows(parts), strict=True):
        assert (x["step"], x["variant"]) == (y["step"], y["variant"])
        assert float(y["first_token_attention_L3"]) == pytest.approx(float(x["first_token_attention_L3"]), rel=1e-5)
    assert gated_interp.load_hooked(parts / "hybrid_ungated", progress=False).cfg.gate == "none"
