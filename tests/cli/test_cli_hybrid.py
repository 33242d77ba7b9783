"""`gated-interp demo`, `sinks` and `info` on a Qwen3.5 folder (linear, full, linear, full) beside a
paper-layout one: maps of the full-attention layers, the attention_layers column, the layer types."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import make_tiny_with_tokenizer  # noqa: E402
from hybrid_models import hybrid_checkpoint  # noqa: E402

from gated_interp import analysis, cli, plotting  # noqa: E402
from gated_interp.cli import main  # noqa: E402
from gated_interp.loading.load import load_folder  # noqa: E402

LAYER_TYPES = ["linear_attention", "full_attention", "linear_attention", "full_attention"]
PROMPT = "the dog ran to the garden."


@pytest.fixture(scope="module")
def folders(tmp_path_factory, bpe_tokenizer):
    from gated_interp.train.tokenizer import save_tokenizer

    root = tmp_path_factory.mktemp("cli_hybrid")
    hybrid_checkpoint("qwen3_5_text", root / "qwen35", seed=4, layer_types=LAYER_TYPES, vocab_size=len(bpe_tokenizer))
    save_tokenizer(bpe_tokenizer, root / "qwen35")
    make_tiny_with_tokenizer(root / "paper", bpe_tokenizer, gate="headwise", seed=1)
    return root / "qwen35", root / "paper"


def test_info_prints_the_layer_types(folders, capsys):
    assert main(["info", str(folders[0])]) == 0
    printed = capsys.readouterr().out
    assert "full_attention on layers [1, 3]; linear_attention (Gated DeltaNet) on layers [0, 2]" in printed
    assert main(["info", str(folders[1])]) == 0
    assert "full_attention on every layer" in capsys.readouterr().out


@pytest.mark.slow
def test_demo_draws_the_full_attention_layers(folders, tmp_path, monkeypatch):
    drawn = {}
    original = plotting.attention_maps

    def spy(maps, str_tokens, layers=None, **kwargs):
        drawn["layers"] = list(layers)
        return original(maps, str_tokens, layers=layers, **kwargs)

    monkeypatch.setattr(plotting, "attention_maps", spy)
    out = tmp_path / "figures"
    assert main(["demo", "--variants", str(folders[0]), "--prompt", PROMPT, "--out", str(out), "--quiet"]) == 0
    assert drawn["layers"] == [1, 3]
    assert (out / "qwen35_selected_layer_attention_maps.png").is_file()
    model = load_folder(folders[0], device="cpu", progress=False)
    _, by_layer, largest, _ = cli.demo_variant(model, "qwen35", PROMPT, tmp_path)
    with torch.no_grad():
        _, cache = model.run_with_cache(PROMPT)
    want = [float(cache["pattern", layer][0, :, 1:, 0].mean()) for layer in (1, 3)]
    assert torch.isnan(by_layer[[0, 2]]).all() and by_layer[[1, 3]].tolist() == pytest.approx(want, rel=1e-5)
    assert largest.tolist() == pytest.approx([float(cache["resid_post", layer].abs().max()) for layer in range(4)])


def test_sinks_compares_a_hybrid_with_a_paper_variant(folders, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the dog ran to the garden.\na little girl saw a bird.\n")
    csv = tmp_path / "table.csv"
    variants = [str(folders[1]), str(folders[0])]
    assert main(["sinks", "--variants", *variants, "--prompts", str(prompts), "--csv", str(csv), "--quiet"]) == 0
    assert "attention_layers" in capsys.readouterr().out
    table = pd.read_csv(csv, index_col="variant")
    assert table.loc["paper", "attention_layers"] == "all" and table.loc["qwen35", "attention_layers"] == "1,3"
    model = load_folder(folders[0], device="cpu", progress=False)
    texts = ["the dog ran to the garden.", "a little girl saw a bird."]
    direct = analysis.compare_variants({"qwen35": model}, texts)
    assert table.loc["qwen35", "first_token_attention"] == pytest.approx(direct.loc["qwen35", "first_token_attention"])


def test_the_bundled_hybrid_pair_is_taken_by_name(tmp_path, capsys):
    """`sinks` takes the pair's names (tiny only) and measures them on the bundled held-out windows."""
    csv = tmp_path / "sinks.csv"
    argv = ["sinks", "--variants", "hybrid_gated", "hybrid_ungated", "--csv", str(csv), "--quiet"]
    assert main(argv + ["--limit", "8"]) == 0
    table = pd.read_csv(csv)
    assert list(table["variant"]) == ["hybrid_gated", "hybrid_ungated"]
    assert set(table["attention_layers"].astype(str)) == {"3"}
    assert main(["info", "hybrid_ungated"]) == 0
    assert "linear_attention (Gated DeltaNet) on layers [0, 1, 2]" in capsys.readouterr().out


def test_the_bundled_hybrid_pair_at_size_1b_is_one_clear_error(capsys):
    assert main(["sinks", "--size", "1B", "--variants", "hybrid_gated", "--quiet"]) == 1
    error = capsys.readouterr().err
    assert 'load_hooked("hybrid_gated", size="tiny")' in error and error.count("\n") == 1
