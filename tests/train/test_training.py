"""A short training run end to end: tokenizer, windows, three variants in lockstep, checkpoints."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from training_corpus import TINY_ARGS

import gated_interp
from gated_interp.train.__main__ import main as train_main
from gated_interp.train.trainer import TrainConfig, build_models, default_architecture, lr_at


@pytest.mark.slow
def test_short_training_run_writes_loadable_checkpoints(corpus, tmp_path):
    out = tmp_path / "run"
    args = [
        "--corpus",
        str(corpus),
        "--out",
        str(out),
        "--tokens",
        "2048",
        "--vocab-size",
        "300",
        "--d-model",
        "32",
        "--n-layers",
        "2",
        "--n-heads",
        "4",
        "--n-key-value-heads",
        "2",
        "--d-head",
        "8",
        "--d-mlp",
        "64",
        "--seq-len",
        "32",
        "--batch-size",
        "8",
        "--eval-interval",
        "4",
        "--eval-windows",
        "4",
        "--warmup-steps",
        "2",
        "--threads",
        "1",
    ]
    assert train_main(args) == 0

    with open(out / "training_log.csv") as file:
        rows = list(csv.DictReader(file))
    steps = {int(r["step"]) for r in rows}
    assert steps == {0, 4, 8}  # 2048 tokens / (8 x 32) = 8 steps, evaluated every 4
    assert {r["variant"] for r in rows} == {"baseline", "gate_headwise", "gate_elementwise"}
    first, last = (
        [float(r["val_loss"]) for r in rows if int(r["step"]) == s and r["variant"] == "baseline"][0] for s in (0, 8)
    )
    assert last < first, "eight steps at lr 3e-3 should lower the held-out loss"

    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["tokens_seen"] == 2048
    for variant, gate in [("baseline", "none"), ("gate_headwise", "headwise"), ("gate_elementwise", "elementwise")]:
        model = gated_interp.load_hooked(out / variant, progress=False)
        assert model.cfg.gate == gate
        assert model.tokenizer is not None and model.tokenizer.bos_token == "<|doc|>"
        assert model.to_tokens("the cat")[0, 0].item() == model.tokenizer.bos_token_id


def test_variants_start_from_the_same_shared_weights():
    train = TrainConfig(
        model=default_architecture(d_model=16, n_layers=2, n_heads=2, n_key_value_heads=1, d_head=8, d_mlp=32)
    )
    models = build_models(train, vocab_size=50, tokenizer=None)
    baseline = dict(models["baseline"].named_parameters())
    for variant in ("gate_headwise", "gate_elementwise"):
        params = dict(models[variant].named_parameters())
        shared = set(baseline) & set(params)
        assert shared == set(baseline)
        assert all(torch.equal(baseline[name], params[name]) for name in shared)
        assert {name for name in params if name not in baseline} == {"blocks.0.attn.W_G", "blocks.1.attn.W_G"}


def test_learning_rate_warms_up_then_decays():
    train = TrainConfig(total_tokens=100 * 32 * 256, warmup_steps=10, lr=1e-3, min_lr_ratio=0.1)
    assert lr_at(0, train) == pytest.approx(1e-4)
    assert lr_at(9, train) == pytest.approx(1e-3)
    assert lr_at(99, train) == pytest.approx(1e-4, rel=0.05)
    assert all(lr_at(s, train) >= lr_at(s + 1, train) for s in range(10, 99))


def test_missing_corpus_is_a_clear_error(tmp_path, capsys):
    assert train_main(["--corpus", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    assert "train.txt" in capsys.readouterr().err


def test_training_never_writes_into_the_bundled_models(tmp_path, capsys):
    from gated_interp.loading.bundled import TINY_DIR
    from gated_interp.train.__main__ import parse_args

    assert parse_args(["--corpus", str(tmp_path)]).out == Path("runs/tiny")
    before = sorted(p.name for p in TINY_DIR.iterdir())
    for out in (TINY_DIR, TINY_DIR / "gate_headwise"):
        assert train_main(["--corpus", str(tmp_path), "--out", str(out)]) == 2
        assert "bundled models' folder" in capsys.readouterr().err
    assert sorted(p.name for p in TINY_DIR.iterdir()) == before


def test_help_and_hints_name_no_workspace_paths(capsys):
    from gated_interp.train import data
    from gated_interp.train.__main__ import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = capsys.readouterr().out + data._CORPUS_HINT
    assert "CORPUS.md" in text and "shared" not in text and "/work" not in text


def test_bundle_names_its_books_and_no_local_paths():
    from gated_interp.loading.bundled import TINY_DIR

    for name in ("metrics.json", "README.md", "CORPUS.md"):
        text = (TINY_DIR / name).read_text()
        assert "/work" not in text and "shared/corpus" not in text, f"{name} names a local path"
    books = [line for line in (TINY_DIR / "CORPUS.md").read_text().splitlines() if line.startswith("| train")]
    held_out = [line for line in (TINY_DIR / "CORPUS.md").read_text().splitlines() if line.startswith("| valid")]
    assert (len(books), len(held_out)) == (170, 8)
    assert "public domain" in (TINY_DIR / "CORPUS.md").read_text()
    assert all("gutenberg.org/ebooks/" in line for line in books + held_out)
    card = " ".join((TINY_DIR / "README.md").read_text().split())
    seeds = json.loads((TINY_DIR / "metrics.json").read_text()).get("seeds")
    if seeds:  # the card states the spread it measured, and says which seeds
        assert "## Seed-to-seed spread" in card and "not measured" not in card
        assert all(f"| baseline | {seed} |" in card for seed in seeds)
    else:
        assert "seed-to-seed spread of these numbers was not measured" in card


def test_train_config_holds_the_model_config_once():
    train = TrainConfig(seq_len=64, model=default_architecture(d_model=48, n_layers=3, d_head=16, rope_theta=500.0))
    models = build_models(train, vocab_size=40, tokenizer=None)
    for variant, model in models.items():
        assert (model.cfg.d_model, model.cfg.n_layers, model.cfg.d_head, model.cfg.rope_theta) == (48, 3, 16, 500.0)
        assert (model.cfg.d_vocab, model.cfg.n_ctx) == (40, 64)
        assert model.cfg.gate == gated_interp.config.VARIANT_GATES[variant]
    saved = json.loads(json.dumps(train.to_dict()))
    assert {"d_model", "n_layers", "rope_theta"} <= set(saved["model"]) and "d_model" not in saved
    assert TrainConfig.from_dict(saved) == train


# The train config of a summary written before TrainConfig embedded the model's (the first
# bundled models' metrics.json, 2026-11).
OLD_FLAT_TRAIN_CONFIG = {
    "variants": ["baseline", "gate_headwise", "gate_elementwise"],
    "d_model": 128, "n_layers": 4, "n_heads": 4, "n_key_value_heads": 2, "d_head": 32, "d_mlp": 384,
    "seq_len": 128, "batch_size": 64, "total_tokens": 6000000, "lr": 0.003, "min_lr_ratio": 0.1,
    "warmup_steps": 100, "weight_decay": 0.1, "betas": [0.9, 0.95], "grad_clip": 1.0, "seed": 0,
    "eval_interval": 50, "eval_windows": 32, "save_interval": 50, "rope_theta": 10000.0,
    "save_dtype": "bfloat16", "extra": {},
}  # fmt: skip


def test_old_flat_train_config_still_loads():
    flat = OLD_FLAT_TRAIN_CONFIG
    assert "d_model" in flat and "model" not in flat
    train = TrainConfig.from_dict(flat)
    assert (train.model.d_model, train.model.n_layers, train.model.n_heads) == (128, 4, 4)
    assert (train.model.n_key_value_heads, train.model.d_head, train.model.d_mlp) == (2, 32, 384)
    assert train.model.rope_theta == 10_000.0 and train.seq_len == 128 and train.betas == (0.9, 0.95)
    with pytest.raises(ValueError, match="flat architecture keys"):
        TrainConfig.from_dict({"seq_len": 8})
    with pytest.raises(ValueError, match="unknown train config keys"):
        TrainConfig.from_dict({**flat, "learning_rate": 1.0})


def test_cli_flags_keep_their_names_and_defaults(tmp_path):
    from gated_interp.train.__main__ import parse_args

    args = parse_args(["--corpus", str(tmp_path)])
    expected = dict(d_model=128, n_layers=4, n_heads=4, n_key_value_heads=2, d_head=32, d_mlp=384, rope_theta=10_000.0)
    assert {name: getattr(args, name) for name in expected} == expected
    assert (args.seq_len, args.batch_size, args.lr, args.weight_decay) == (256, 32, 3e-3, 0.1)


@pytest.mark.slow
def test_no_qk_norm_trains_models_without_query_and_key_norms(corpus, tmp_path):
    out = tmp_path / "run"
    args = ["--corpus", str(corpus), "--out", str(out), "--tokens", "512", "--variants", "baseline", "gate_headwise"]
    assert train_main(args + TINY_ARGS + ["--no-qk-norm"]) == 0

    assert json.loads((out / "train_config.json").read_text())["model"]["use_qk_norm"] is False
    for variant in ("baseline", "gate_headwise"):
        assert json.loads((out / variant / "config.json").read_text())["use_qk_norm"] is False
        model = gated_interp.load_hooked(out / variant, progress=False)
        assert not model.cfg.use_qk_norm
        assert not [name for name in model.state_dict() if "q_norm" in name or "k_norm" in name]


def test_qk_norm_is_on_unless_turned_off(tmp_path):
    from gated_interp.train.__main__ import parse_args

    assert parse_args(["--corpus", str(tmp_path)]).qk_norm is True
    assert parse_args(["--corpus", str(tmp_path), "--no-qk-norm"]).qk_norm is False


def _state(run):
    from gated_interp.train.trainer import load_train_state

    return load_train_state(run)


@pytest.mark.slow
def test_a_resumed_run_equals_an_uninterrupted_one(corpus, tmp_path):
    """8 steps in one go == 4 steps, stop, --resume for the other 4: weights, AdamW state, log."""
    common = ["--corpus", str(corpus), "--tokens", "2048", "--eval-interval", "2", "--save-interval", "2"]
    common += TINY_ARGS + ["--variants", "baseline", "gate_headwise"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert train_main(common + ["--out", str(whole)]) == 0
    assert train_main(common + ["--out", str(parts), "--stop-after-steps", "4"]) == 0
    stopped = json.loads((parts / "training_summary.json").read_text())
    assert stopped["steps_done"] == 4 and "--resume" in stopped["stopped_early"]
    # Flags that shape the run are read from the run folder on resume, not from the command line.
    assert train_main(["--corpus", str(corpus), "--resume", str(parts), "--lr", "1.0", "--threads", "1"]) == 0

    a, b = _state(whole), _state(parts)
    assert a["step"] == b["step"] == 8
    for variant in ("baseline", "gate_headwise"):
        for name, tensor in a["models"][variant].items():
            torch.testing.assert_close(b["models"][variant][name], tensor, rtol=1e-5, atol=1e-6, msg=name)
        for index, slot in a["optimizers"][variant]["state"].items():
            other = b["optimizers"][variant]["state"][index]
            assert other["step"] == slot["step"]
            torch.testing.assert_close(other["exp_avg_sq"], slot["exp_avg_sq"], rtol=1e-4, atol=1e-10)

    def rows(run):
        with open(run / "training_log.csv") as file:
            return list(csv.DictReader(file))

    whole_rows, part_rows = rows(whole), rows(parts)
    assert [(r["step"], r["tokens"], r["variant"]) for r in part_rows] == [
        (r["step"], r["tokens"], r["variant"]) for r in whole_rows
    ]
    assert [int(r["tokens"]) for r in part_rows][-1] == 2048  # the log counts the tokens of both parts
    for x, y in zip(whole_rows, part_rows):
        assert float(y["val_loss"]) == pytest.approx(float(x["val_loss"]), rel=1e-5)
        assert float(y["train_loss"]) == pytest.approx(float(x["train_loss"]), rel=1e-5, nan_ok=True)
    summary = json.loads((parts / "training_summary.json").read_text())
    assert summary["tokens_seen"] == 2048 and summary["steps_done"] == 8 and "stopped_early" not in summary
    model = gated_interp.load_hooked(parts / "gate_headwise", progress=False)
    assert model.cfg.gate == "headwise" and model.tokenizer.bos_token == "<|doc|>"
    for variant in ("baseline", "gate_headwise"):  # the same tokenizer files as a run never stopped
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            assert (parts / variant / name).read_bytes() == (whole / variant / name).read_bytes(), name


def test_resume_needs_an_earlier_run(corpus, tmp_path, capsys):
    assert train_main(["--corpus", str(corpus), "--resume", str(tmp_path / "empty")]) == 2
    assert "--resume" in capsys.readouterr().err
