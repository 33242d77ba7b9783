"""The maintainer command that writes the bundled models' card (`maintainer/model_card.py`, not
installed): the committed card is what it renders from the bundle, and it combines, checks and
records training runs (tiny runs trained here)."""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
from training_corpus import TINY_ARGS, write_corpus  # noqa: E402

import gated_interp  # noqa: E402
from gated_interp.loading.bundled import TINY_DIR  # noqa: E402
from gated_interp.train.__main__ import main as train_main  # noqa: E402
from maintainer.model_card import log_trends, render  # noqa: E402
from maintainer.model_card import main as card_main  # noqa: E402


def test_card_renders_the_bundle_from_its_metrics(tmp_path):
    for name in ("metrics.json", "training_log.csv"):
        shutil.copy(TINY_DIR / name, tmp_path / name)
    render(tmp_path)
    assert (tmp_path / "README.md").read_text() == (TINY_DIR / "README.md").read_text()


def test_the_card_command_is_not_part_of_the_installed_package():
    assert importlib.util.find_spec("gated_interp.train.card") is None
    card = (TINY_DIR / "README.md").read_text()
    assert "python -m maintainer.model_card --run " in card and "gated_interp.train.card" not in card
    assert "issue" not in card.lower()  # the card names its goals, not a tracker's numbers


@pytest.mark.slow
def test_card_combines_variants_trained_in_separate_processes(corpus, tmp_path):
    """One process per variant gives the weights of one process training both, and the card takes both folders."""
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


@pytest.mark.slow
def test_card_states_the_facts_of_its_runs(corpus, tmp_path):
    """Vocabulary, book counts and hardware come from the runs, the corpus and --hardware, not from the script."""
    (corpus / "manifest.tsv").write_text(
        "split\ttitle\tauthor\tgutenberg_ebook_no\ntrain\tA\tX\t1\ntrain\tB\tY\t2\ntrain\tC\tZ\t3\nvalid\tD\tX\t4\n"
    )
    run = tmp_path / "run"
    common = ["--corpus", str(corpus), "--tokens", "512", "--eval-interval", "2", "--variants", "baseline"]
    assert train_main(common + TINY_ARGS + ["--out", str(run)]) == 0
    out = tmp_path / "card"
    assert card_main(["--corpus", str(corpus), "--heldout-windows", "2", "--run", str(run), "--out", str(out),
                      "--hardware", "a test machine"]) == 0  # fmt: skip
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["corpus"]["books"] == {"train": 3, "held_out": 1}
    vocabulary = saved["training"]["train_config"]["model"]["d_vocab"]
    assert vocabulary == len(gated_interp.load_hooked(out / "baseline", progress=False).tokenizer)
    text = " ".join((out / "README.md").read_text().split())
    assert "(4 books by" in text and "3 for training, 1 held out" in text
    assert f"byte-level BPE with {vocabulary:,} entries" in text and "on a test machine with" in text


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


def test_log_trend_reads_the_last_fifth_of_training_not_the_last_two_evaluations():
    """A run stopped a few steps after an evaluation logs two close evaluations; a dip between them
    is noise, not the end of the sink's growth."""
    import pandas as pd

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
