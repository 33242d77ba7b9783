"""A short training run end to end: tokenizer, windows, three variants in lockstep, checkpoints."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
import torch

import gated_interp
from gated_interp.train.__main__ import main as train_main
from gated_interp.train.trainer import TrainConfig, build_models, default_architecture, lr_at

WORDS = "the a little girl boy cat dog ran saw big small red house tree and then said she he it was".split()


def write_corpus(folder, n_docs: int, seed: int) -> None:
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        paragraphs = [" ".join(rng.choice(WORDS) for _ in range(40)).capitalize() + "." for _ in range(12)]
        docs.append("\n".join(paragraphs))
    (folder / ("train.txt" if seed == 0 else "valid.txt")).write_text("\n\n".join(docs) + "\n")


@pytest.fixture
def corpus(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    write_corpus(folder, n_docs=6, seed=0)
    write_corpus(folder, n_docs=2, seed=1)
    return folder


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


def test_card_renders_the_bundle_from_its_metrics(tmp_path):
    import shutil

    from gated_interp.loading.bundled import TINY_DIR
    from gated_interp.train.card import render

    for name in ("metrics.json", "training_log.csv"):
        shutil.copy(TINY_DIR / name, tmp_path / name)
    render(tmp_path)
    assert (tmp_path / "README.md").read_text() == (TINY_DIR / "README.md").read_text()


def test_cli_flags_keep_their_names_and_defaults(tmp_path):
    from gated_interp.train.__main__ import parse_args

    args = parse_args(["--corpus", str(tmp_path)])
    expected = dict(d_model=128, n_layers=4, n_heads=4, n_key_value_heads=2, d_head=32, d_mlp=384, rope_theta=10_000.0)
    assert {name: getattr(args, name) for name in expected} == expected
    assert (args.seq_len, args.batch_size, args.lr, args.weight_decay) == (256, 32, 3e-3, 0.1)


TINY_ARGS = [
    "--vocab-size", "300", "--d-model", "32", "--n-layers", "2", "--n-heads", "4", "--n-key-value-heads", "2",
    "--d-head", "8", "--d-mlp", "64", "--seq-len", "32", "--batch-size", "8", "--warmup-steps", "2",
    "--eval-windows", "2", "--threads", "1",
]  # fmt: skip


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


@pytest.mark.slow
def test_card_combines_variants_trained_in_separate_processes(corpus, tmp_path):
    """One process per variant gives the weights of one process training both, and the card takes both folders."""
    from gated_interp.train.card import main as card_main

    common = ["--corpus", str(corpus), "--tokens", "1024", "--eval-interval", "2"] + TINY_ARGS
    both, a, b = tmp_path / "both", tmp_path / "a", tmp_path / "b"
    assert train_main(common + ["--out", str(both), "--variants", "baseline", "gate_headwise"]) == 0
    assert train_main(common + ["--out", str(a), "--variants", "baseline"]) == 0
    assert train_main(common + ["--out", str(b), "--variants", "gate_headwise"]) == 0
    card = ["--corpus", str(corpus), "--heldout-windows", "2"]
    assert card_main(card + ["--run", str(both), "--out", str(tmp_path / "card1")]) == 0
    assert card_main(card + ["--run", str(b), str(a), "--out", str(tmp_path / "card2")]) == 0

    one, two = (json.loads((tmp_path / c / "metrics.json").read_text()) for c in ("card1", "card2"))
    assert list(two["variants"]) == ["baseline", "gate_headwise"]
    assert two["training"]["processes"] == 2 and two["training"]["tokens_seen"] == 1024
    for variant in ("baseline", "gate_headwise"):
        assert two["variants"][variant]["loss"] == pytest.approx(one["variants"][variant]["loss"], rel=1e-5)
    logs = [(tmp_path / c / "training_log.csv").read_text().splitlines() for c in ("card1", "card2")]
    assert [line.split(",")[:3] for line in logs[0]] == [line.split(",")[:3] for line in logs[1]]
    assert "2 parallel processes" in (tmp_path / "card2" / "README.md").read_text()
    summary_b = json.loads((b / "training_summary.json").read_text())  # b resumed with 2 threads, say
    (b / "training_summary.json").write_text(json.dumps({**summary_b, "torch_threads": 2}))
    assert card_main(card + ["--run", str(a), str(b), "--out", str(tmp_path / "card4")]) == 0
    assert "with 1 or 2 torch thread(s)" in (tmp_path / "card4" / "README.md").read_text()

    with pytest.raises(SystemExit):  # a variant given twice
        card_main(card + ["--run", str(a), str(both), "--out", str(tmp_path / "card3")])


@pytest.fixture(scope="module")
def seed_and_trial_runs(tmp_path_factory):
    """(corpus, folder) with runs `s0`, `s1`, `s2` of one recipe at seeds 0-2 and a trial `lr` (seed 1,
    another learning rate), each of baseline and gate_headwise; shared by the card's seed tests."""
    folder = tmp_path_factory.mktemp("seed_runs")
    corpus = folder / "corpus"
    corpus.mkdir()
    write_corpus(corpus, n_docs=6, seed=0)
    write_corpus(corpus, n_docs=2, seed=1)
    common = ["--corpus", str(corpus), "--tokens", "1024", "--eval-interval", "2"] + TINY_ARGS
    common += ["--variants", "baseline", "gate_headwise"]
    for seed in (0, 1, 2):
        assert train_main(common + ["--out", str(folder / f"s{seed}"), "--seed", str(seed)]) == 0
    assert train_main(common + ["--out", str(folder / "lr"), "--seed", "1", "--lr", "0.01"]) == 0
    return corpus, folder


@pytest.mark.slow
def test_card_states_the_spread_over_seeds(seed_and_trial_runs, tmp_path, capsys):
    """--seed-run: runs of other seeds are measured on the card's windows; the card gives the spread."""
    from safetensors.torch import load_file

    from gated_interp.train.card import main as card_main

    corpus, runs = seed_and_trial_runs
    card = ["--corpus", str(corpus), "--heldout-windows", "2", "--run", str(runs / "s0")]
    assert (
        card_main(
            card + ["--seed-run", str(runs / "s1"), "--trial-run", str(runs / "lr"), "--out", str(tmp_path / "card")]
        )
        == 0
    )

    saved = json.loads((tmp_path / "card" / "metrics.json").read_text())
    assert list(saved["seeds"]) == ["1"] and list(saved["seeds"]["1"]) == ["baseline", "gate_headwise"]
    seed_one = gated_interp.load_hooked(runs / "s1" / "gate_headwise", progress=False)
    windows = load_file(str(tmp_path / "card" / "heldout_tokens.safetensors"))["tokens"].long()
    loss = seed_one(windows, return_type="loss").item()
    assert saved["seeds"]["1"]["gate_headwise"]["loss"] == pytest.approx(loss, rel=1e-4)
    assert saved["seeds"]["1"]["gate_headwise"]["loss"] != saved["variants"]["gate_headwise"]["loss"]
    log = (tmp_path / "card" / "training_log.csv").read_text().splitlines()
    assert log[0].split(",")[-1] == "seed" and {line.split(",")[-1] for line in log[1:]} == {"0", "1"}
    text = (tmp_path / "card" / "README.md").read_text()
    assert "## Seed-to-seed spread" in text and "| gate_headwise | 1 |" in text and "not measured" not in text
    # The trial run is listed with its own recipe and the last row of its training log.
    trial = saved["trials"][1]
    assert (trial["run"], trial["variant"], trial["lr"], trial["tokens"]) == ("lr", "gate_headwise", 0.01, 1024)
    with open(runs / "lr" / "training_log.csv") as file:
        last = [row for row in csv.DictReader(file) if row["variant"] == "gate_headwise"][-1]
    assert trial["loss"] == pytest.approx(float(last["val_loss"]))
    assert "## Recipes tried" in text and "| lr | gate_headwise | 32 | 8 | 0.01 |" in text
    assert "--seed-run runs/s1 --trial-run runs/lr" in text and str(runs) not in text

    for bad, message in [(runs / "lr", "differs from the bundled runs in train config"), (runs / "s0", "seed")]:
        with pytest.raises(SystemExit):
            card_main(card + ["--seed-run", str(bad), "--out", str(tmp_path / "card_bad")])
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a trial folder without a run in it
        card_main(card + ["--trial-run", str(tmp_path / "nothing"), "--out", str(tmp_path / "card_bad")])
    assert "--trial-run" in capsys.readouterr().err and not (tmp_path / "card_bad").exists()


@pytest.mark.slow
def test_a_seed_added_to_a_bundle_equals_one_given_when_it_was_written(seed_and_trial_runs, tmp_path, capsys):
    """--from-bundle --seed-run measures the other seed on the bundle's windows, as --run --seed-run does."""
    from gated_interp.train.card import main as card_main

    corpus, runs = seed_and_trial_runs
    card = ["--corpus", str(corpus), "--heldout-windows", "2", "--run", str(runs / "s0")]
    assert card_main(card + ["--seed-run", str(runs / "s1"), "--out", str(tmp_path / "at_once")]) == 0
    assert card_main(card + ["--out", str(tmp_path / "later")]) == 0
    before = (tmp_path / "later" / "metrics.json").read_text()

    for bad, message in [(runs / "lr", "differs from the bundled runs in train config"), (runs / "s0", "seed")]:
        with pytest.raises(SystemExit):
            card_main(["--from-bundle", str(tmp_path / "later"), "--seed-run", str(bad)])
        assert message in capsys.readouterr().err
        assert (tmp_path / "later" / "metrics.json").read_text() == before  # nothing written
    assert card_main(["--from-bundle", str(tmp_path / "later"), "--seed-run", str(runs / "s1")]) == 0

    at_once, later = (json.loads((tmp_path / c / "metrics.json").read_text()) for c in ("at_once", "later"))
    assert later["seeds"] == at_once["seeds"] and list(later["seeds"]) == ["1"]
    logs = [(tmp_path / c / "training_log.csv").read_text() for c in ("at_once", "later")]
    assert logs[0] == logs[1]
    text = (tmp_path / "later" / "README.md").read_text()
    assert "## Seed-to-seed spread" in text and "--seed-run runs/s1" in text

    # Trials recorded later are added to those already there; a run given again replaces its rows.
    assert card_main(["--from-bundle", str(tmp_path / "later"), "--trial-run", str(runs / "lr")]) == 0
    assert card_main(["--from-bundle", str(tmp_path / "later"), "--trial-run", str(runs / "lr")]) == 0
    trials = json.loads((tmp_path / "later" / "metrics.json").read_text())["trials"]
    assert [(t["run"], t["variant"]) for t in trials] == [("lr", "baseline"), ("lr", "gate_headwise")]
    assert "--seed-run runs/s1 --trial-run runs/lr" in (tmp_path / "later" / "README.md").read_text()

    # A seed added later still keeps the earlier one: in the seeds, the training log and the command.
    assert card_main(["--from-bundle", str(tmp_path / "later"), "--seed-run", str(runs / "s2")]) == 0
    saved = json.loads((tmp_path / "later" / "metrics.json").read_text())
    assert list(saved["seeds"]) == ["1", "2"] and saved["seeds"]["1"] == at_once["seeds"]["1"]
    with open(tmp_path / "later" / "training_log.csv") as file:
        seeds_in_log = [row["seed"] for row in csv.DictReader(file)]
    assert list(dict.fromkeys(seeds_in_log)) == ["0", "1", "2"]
    assert seeds_in_log.count("1") == seeds_in_log.count("2") == seeds_in_log.count("0")
    assert "--seed-run runs/s1 runs/s2 --trial-run runs/lr" in (tmp_path / "later" / "README.md").read_text()


def test_loss_difference_has_no_gap_where_only_one_variant_was_evaluated():
    """A run stopped by --max-minutes logs an evaluation at the step it stopped; its loss curve
    minus the baseline's must skip that step, not break the line there."""
    import pandas as pd

    from gated_interp.train.card import emergence_figure

    def row(step, variant, loss):
        return {
            "step": step, "tokens": step * 10, "variant": variant, "val_loss": loss,
            "first_token_attention_L0": 0.1, "max_abs_resid_L0": 1.0,
        }  # fmt: skip

    steps = [0, 50, 100, 150]
    log = pd.DataFrame(
        [row(s, "baseline", 5.0 - s / 100) for s in steps]
        + [row(s, "gate_headwise", 4.9 - s / 100) for s in [0, 50, 51, 100, 150]]
    )
    fig = emergence_figure(log, seq_len=8)
    ax_loss = fig.axes[1]  # the first row's last column: the loss difference panel
    assert ax_loss.get_title() == "Held-out loss minus the baseline's"
    gated_line = ax_loss.get_lines()[1]
    assert list(gated_line.get_xdata()) == [s * 10 / 1e6 for s in steps]
    assert gated_line.get_ydata() == pytest.approx([-0.1] * 4)


def test_log_trend_reads_the_last_fifth_of_training_not_the_last_two_evaluations():
    """A run stopped a few steps after an evaluation logs two close evaluations; a dip between them
    is noise, not the end of the sink's growth."""
    import pandas as pd

    from gated_interp.train.card import log_trends

    steps = [0, 50, 100, 150, 200, 250, 260]
    attention = [0.03, 0.05, 0.07, 0.09, 0.11, 0.13, 0.128]
    log = pd.DataFrame(
        {
            "step": steps, "tokens": [s * 100 for s in steps], "variant": "baseline",
            "first_token_attention_L0": attention, "max_abs_resid_L0": [1, 2, 3, 4, 5, 6, 6],
        }
    )  # fmt: skip
    trend = log_trends(log, layer=0)
    assert trend["attn_earlier_tokens"] == 20_000  # the last evaluation within 80% of 26,000 tokens
    assert (trend["attn_earlier"], trend["attn_last"]) == (0.11, 0.128)
    assert trend["resid_peak_is_last"] is False and trend["resid_peak_tokens"] == 25_000
