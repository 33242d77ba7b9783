"""The card of a hybrid pair (`--layout qwen3_5`: hybrid_gated beside hybrid_ungated), written by
`maintainer/model_card.py` from tiny runs trained here, one process per variant, as the real ones."""

from __future__ import annotations

import json
import shutil

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
from training_corpus import TINY_ARGS, write_corpus  # noqa: E402

from gated_interp.analysis import uniform_first_token_attention  # noqa: E402
from gated_interp.loading.bundled import TINY_DIR  # noqa: E402
from gated_interp.train.__main__ import main as train_main  # noqa: E402
from gated_interp.train.trainer import TrainConfig, qwen3_5_architecture  # noqa: E402
from maintainer.hybrid_card import hybrid_card_text, shared_with_paper_bundle  # noqa: E402
from maintainer.model_card import main as card_main  # noqa: E402
from maintainer.model_card import render  # noqa: E402

HYBRID = ["--layout", "qwen3_5", "--n-layers", "4"]  # after TINY_ARGS: its --n-layers 2 has no full layer
VARIANTS = ("hybrid_gated", "hybrid_ungated")


def strict_json(text: str):
    """JSON as other languages read it: NaN or Infinity is an error, not a float."""

    def refuse(constant):
        raise ValueError(f"{constant} in metrics.json")

    return json.loads(text, parse_constant=refuse)


def table_rows(text: str, variant: str) -> list[list[str]]:
    """The cells of every table row of `variant`, in the order the card gives them."""
    rows = [line for line in text.splitlines() if line.startswith(f"| {variant} |")]
    return [[cell.strip() for cell in row.strip("|").split("|")][1:] for row in rows]


@pytest.fixture(scope="module")
def hybrid_runs(tmp_path_factory):
    """(corpus, folder, bundle): runs `s{seed}_{variant}` of each variant at seeds 0 and 1, one process
    per variant, and a card of seed 0 in `bundle`. Like the real hybrid runs, the seed-0 variant
    folders hold no special_tokens_map.json."""
    folder = tmp_path_factory.mktemp("hybrid_runs")
    corpus = folder / "corpus"
    corpus.mkdir()
    write_corpus(corpus, n_docs=6, seed=0)
    write_corpus(corpus, n_docs=2, seed=1)
    common = ["--corpus", str(corpus), "--tokens", "512", "--eval-interval", "1"] + TINY_ARGS + HYBRID
    for seed in (0, 1):
        for variant in VARIANTS:
            out = folder / f"s{seed}_{variant}"
            assert train_main(common + ["--out", str(out), "--variants", variant, "--seed", str(seed)]) == 0
    for variant in VARIANTS:
        (folder / f"s0_{variant}" / variant / "special_tokens_map.json").unlink(missing_ok=True)
    bundle = folder / "bundle"
    runs = [str(folder / "s0_hybrid_ungated"), str(folder / "s0_hybrid_gated")]  # not the trainer's order
    card = ["--corpus", str(corpus), "--heldout-windows", "2", "--hardware", "a test machine"]
    assert card_main(card + ["--run", *runs, "--out", str(bundle)]) == 0
    return corpus, folder, bundle


@pytest.mark.slow
def test_a_hybrid_card_writes_strict_json_with_null_where_a_layer_has_no_attention(hybrid_runs):
    _, _, bundle = hybrid_runs
    saved = strict_json((bundle / "metrics.json").read_text())
    assert list(saved["variants"]) == list(VARIANTS)  # the trainer's order, whatever order --run gave
    assert saved["training"]["train_config"]["variants"] == list(VARIANTS)
    for variant in VARIANTS:
        m = saved["variants"][variant]
        assert m["layer_types"] == ["linear_attention"] * 3 + ["full_attention"]
        assert m["first_token_attention_by_layer"][:3] == [None] * 3
        assert 0 < m["first_token_attention_by_layer"][3] <= 1
        assert m["first_token_attention"] == pytest.approx(m["first_token_attention_by_layer"][3])
        assert all(x > 0 for x in m["max_abs_resid_by_layer"]) and len(m["max_abs_resid_by_layer"]) == 4
    gated = saved["variants"]["hybrid_gated"]
    assert gated["mean_gate_by_layer"][:3] == [None] * 3 and 0 < gated["mean_gate_by_layer"][3] < 1
    assert "mean_gate" not in saved["variants"]["hybrid_ungated"]
    # The tokenizer files the runs have are copied; the one they lack is not asked for.
    for variant in VARIANTS:
        names = {path.name for path in (bundle / variant).iterdir()}
        assert names == {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}


@pytest.mark.slow
def test_the_hybrid_card_states_the_numbers_of_its_metrics(hybrid_runs):
    _, _, bundle = hybrid_runs
    saved = strict_json((bundle / "metrics.json").read_text())
    text = (bundle / "README.md").read_text()
    assert text.startswith("# Bundled tiny hybrid models (Qwen3.5 layout)\n")
    layers = " | ".join([f"layer {i} (Gated DeltaNet)" for i in range(3)] + ["layer 3 (full attention)"])
    header = f"| variant | {layers} |"
    assert text.count(header) == 2  # first-token attention and max |residual|, each layer's type named
    assert "no attention pattern over keys" in text
    for variant in VARIANTS:
        m = saved["variants"][variant]
        headline, attention, resid = table_rows(text, variant)
        gate = f"{m['mean_gate']:.3f}" if "mean_gate" in m else "-"
        assert headline == [f"{m['loss']:.4f}", f"{m['first_token_attention']:.4f}", f"{m['sink_rate']:.3f}",
                            f"{m['max_abs_resid']:.2f}", gate]  # fmt: skip
        assert attention == ["-", "-", "-", f"{m['first_token_attention_by_layer'][3]:.4f}"]
        assert resid == [f"{x:.1f}" for x in m["max_abs_resid_by_layer"]]
    difference = saved["variants"]["hybrid_gated"]["loss"] - saved["variants"]["hybrid_ungated"]["loss"]
    assert f"gated minus ungated {difference:+.4f}" in text
    # One training command per process, with the flags that give the recorded config.
    for variant in VARIANTS:
        assert f"--layout qwen3_5 --variants {variant} --tokens 512 " in text
    assert "--run runs/s0_hybrid_ungated runs/s0_hybrid_gated --corpus" in text
    assert "Each variant was trained once, from seed 0" in text and "training_emergence.png" in text
    assert "paper-layout" not in text  # the test corpus and tokenizer are not the bundled models'
    assert "(`tests/loading/test_bundled_hybrid.py`)" in text


@pytest.mark.slow
def test_the_hybrid_contrast_is_stated_in_the_direction_of_the_numbers(hybrid_runs, tmp_path):
    """Re-rendered from metrics where the gate lowers first-token attention, then raises it."""
    _, _, bundle = hybrid_runs
    for name in ("metrics.json", "training_log.csv"):
        shutil.copy(bundle / name, tmp_path / name)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    lowered = "the gate lowers it by 4.00x (0.4000 ungated, 0.1000 gated)"
    raised = "the gate does not lower it; the gated model's is 2.00x the ungated one's"
    for gated_attention, words in [(0.1, lowered), (0.8, raised)]:
        saved["variants"]["hybrid_ungated"]["first_token_attention_by_layer"][3] = 0.4
        saved["variants"]["hybrid_gated"]["first_token_attention_by_layer"][3] = gated_attention
        (tmp_path / "metrics.json").write_text(json.dumps(saved))
        render(tmp_path)
        assert words in (tmp_path / "README.md").read_text()


def _pair_text(gated: tuple, ungated: tuple, shared: dict | None = None) -> str:
    """A hybrid card from hand-made figures (first-token attention on layer 3, max |residual|, loss)."""
    model = qwen3_5_architecture(d_model=32, n_layers=4, n_heads=4, n_key_value_heads=2, d_head=8, d_mlp=64)
    train = TrainConfig(variants=VARIANTS, model=model, seq_len=32)
    summary = {"train_config": train.to_dict(), "steps_done": 2, "tokens_seen": 512, "wall_time_s": 60,
               "torch_threads": 1, "processes": 2}  # fmt: skip
    metrics = {}
    for variant, (attention, resid, loss) in (("hybrid_gated", gated), ("hybrid_ungated", ungated)):
        metrics[variant] = {
            "loss": loss, "first_token_attention": attention, "sink_rate": 0.0, "max_abs_resid": sum(resid) / 4,
            "first_token_attention_by_layer": [None, None, None, attention], "max_abs_resid_by_layer": resid,
            "layer_types": ["linear_attention"] * 3 + ["full_attention"], "n_heldout_windows": 2, "sample": "x",
        }  # fmt: skip
    return hybrid_card_text(metrics, summary, {"train_bytes": 1000, "training_windows": 10}, shared=shared)


def test_the_hybrid_contrast_sentences_follow_the_sign_of_each_difference():
    lowered = _pair_text(gated=(0.05, [1.0, 2.0, 3.0, 4.0], 3.0), ungated=(0.15, [2.0, 5.0, 6.0, 10.0], 3.1))
    assert "layer 3: the gate lowers it by 3.00x (0.1500 ungated, 0.0500 gated)" in lowered
    assert "the ungated model's is larger in every layer, 2.00-2.50x the gated model's" in lowered
    assert "the gated model's is lower (gated minus ungated -0.1000 nats)" in lowered
    uniform = uniform_first_token_attention(32)  # 0.0987: what uniform attention gives over 32 tokens
    assert f"hybrid_ungated {0.15 / uniform:.2f}x the uniform level (above it)" in lowered
    assert f"hybrid_gated {0.05 / uniform:.2f}x the uniform level (at or below it)" in lowered

    raised = _pair_text(gated=(0.03, [2.0, 4.0, 6.0, 8.0], 3.2), ungated=(0.02, [1.0, 3.0, 3.0, 4.0], 3.1))
    assert "layer 3: the gate does not lower it; the gated model's is 1.50x the ungated one's" in raised
    assert "the ungated model's is smaller in every layer, 0.50-0.75x the gated model's" in raised
    assert "the gated model's is higher (gated minus ungated +0.1000 nats)" in raised

    mixed = _pair_text(gated=(0.02, [2.0, 2.0, 2.0, 2.0], 3.0), ungated=(0.02, [1.0, 3.0, 2.0, 2.0], 3.0))
    assert "the same with and without the gate (0.0200)" in mixed
    assert "neither model's is larger in every layer; ungated / gated is 0.50-1.50x" in mixed
    assert "Held-out loss: the same for both" in mixed


@pytest.mark.slow
def test_a_seed_added_to_a_hybrid_bundle_gives_the_spread(hybrid_runs, tmp_path):
    _, runs, bundle = hybrid_runs
    later = tmp_path / "later"
    shutil.copytree(bundle, later)
    seed_runs = [str(runs / f"s1_{variant}") for variant in VARIANTS]
    assert card_main(["--from-bundle", str(later), "--seed-run", *seed_runs]) == 0

    saved = strict_json((later / "metrics.json").read_text())
    assert list(saved["seeds"]) == ["1"] and list(saved["seeds"]["1"]) == list(VARIANTS)
    seed_one = saved["seeds"]["1"]["hybrid_gated"]
    assert seed_one["first_token_attention_by_layer"][:3] == [None] * 3
    assert seed_one["loss"] != saved["variants"]["hybrid_gated"]["loss"]
    text = (later / "README.md").read_text()
    assert "## Seed-to-seed spread" in text and "trained once" not in text
    attention = " / ".join(["-"] * 3 + [f"{seed_one['first_token_attention_by_layer'][3]:.3f}"])
    assert f"| hybrid_gated | 1 | {seed_one['loss']:.4f} | {attention} |" in text
    assert "- seed 1: layer 3: the gate" in text
    assert "--seed-run runs/s1_hybrid_gated runs/s1_hybrid_ungated" in text


@pytest.mark.slow
def test_a_hybrid_run_without_its_weights_is_refused_before_anything_is_written(hybrid_runs, tmp_path, capsys):
    corpus, runs, _ = hybrid_runs
    broken = tmp_path / "s0_hybrid_gated"
    shutil.copytree(runs / "s0_hybrid_gated", broken)
    (broken / "hybrid_gated" / "model.safetensors").unlink()
    out = tmp_path / "card"
    args = ["--corpus", str(corpus), "--run", str(broken), str(runs / "s0_hybrid_ungated"), "--out", str(out)]
    with pytest.raises(SystemExit):
        card_main(args)
    assert "hybrid_gated/model.safetensors" in capsys.readouterr().err and not out.exists()


def test_the_card_says_it_shares_books_and_tokenizer_with_the_paper_bundle_only_when_it_does(tmp_path):
    paper = json.loads((TINY_DIR / "metrics.json").read_text())
    (tmp_path / "hybrid_gated").mkdir()
    shutil.copy(TINY_DIR / "baseline" / "tokenizer.json", tmp_path / "hybrid_gated" / "tokenizer.json")
    saved = {"variants": {"hybrid_gated": {}}, "corpus": dict(paper["corpus"])}
    (tmp_path / "metrics.json").write_text(json.dumps(saved))
    assert shared_with_paper_bundle(tmp_path) == {"books": True, "tokenizer": True}

    saved["corpus"]["train_bytes"] += 1
    (tmp_path / "metrics.json").write_text(json.dumps(saved))
    (tmp_path / "hybrid_gated" / "tokenizer.json").write_text("{}")
    assert shared_with_paper_bundle(tmp_path) == {"books": False, "tokenizer": False}
    (tmp_path / "hybrid_gated" / "tokenizer.json").unlink()
    assert shared_with_paper_bundle(tmp_path) == {"books": False, "tokenizer": False}

    said = _pair_text((0.1, [1.0] * 4, 3.0), (0.1, [1.0] * 4, 3.0), shared={"books": True, "tokenizer": True})
    assert "the same books as the bundled paper-layout tiny models'" in said
    assert "(`tokenizer.json`, identical to the paper-layout tiny models')" in said
    unsaid = _pair_text((0.1, [1.0] * 4, 3.0), (0.1, [1.0] * 4, 3.0))
    assert "paper-layout" not in unsaid
