"""The `gated-interp` command line, run in-process on tiny random "1B" checkpoints.

`GATED_INTERP_CHECKPOINTS` points at a folder with `1B_baseline`, `1B_gate_headwise` and
`1B_gate_elementwise` (random tiny models with a tokenizer), so `--size 1B` resolves offline.
"""

from __future__ import annotations

import subprocess
import sys

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from helpers import make_tiny_with_tokenizer, require_bundled  # noqa: E402

import gated_interp  # noqa: E402
from gated_interp.cli import FIRST_TOKEN_FIGURE, MASSIVE_FIGURE, main  # noqa: E402
from gated_interp.loading.resolve import VARIANTS  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GATE_OF = {"baseline": "none", "gate_headwise": "headwise", "gate_elementwise": "elementwise"}
PROMPT = "the dog ran."


@pytest.fixture(scope="module")
def mirror(tmp_path_factory, bpe_tokenizer):
    """A `GATED_INTERP_CHECKPOINTS` folder with the three variants as tiny random models."""
    root = tmp_path_factory.mktemp("released")
    for seed, variant in enumerate(VARIANTS):
        make_tiny_with_tokenizer(root / f"1B_{variant}", bpe_tokenizer, gate=GATE_OF[variant], seed=seed)
    return root


@pytest.fixture
def released(mirror, monkeypatch):
    monkeypatch.setenv("GATED_INTERP_CHECKPOINTS", str(mirror))
    return mirror


def is_png(path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC


@pytest.mark.slow
def test_demo_writes_maps_and_comparison_figures(released, tmp_path, capsys):
    out = tmp_path / "figures"
    assert main(["demo", "--size", "1B", "--prompt", PROMPT, "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    expected = [out / f"{v}_selected_layer_attention_maps.png" for v in VARIANTS]
    expected += [out / FIRST_TOKEN_FIGURE, out / MASSIVE_FIGURE]
    printed = capsys.readouterr().out
    for path in expected:
        assert is_png(path), path
        assert str(path) in printed


def test_demo_accepts_a_folder_as_variant(released, tmp_path, capsys):
    out = tmp_path / "figures"
    folder = released / "1B_gate_headwise"
    assert main(["demo", "--variants", str(folder), "--prompt", PROMPT, "--out", str(out), "--quiet"]) == 0
    assert is_png(out / "1B_gate_headwise_selected_layer_attention_maps.png")
    assert is_png(out / FIRST_TOKEN_FIGURE)


def test_sinks_prints_table_and_writes_csv(released, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the dog ran to the garden.\n\n  a little girl saw a bird.  \nthe king said happy.\n")
    csv = tmp_path / "table.csv"
    code = main(["sinks", "--size", "1B", "--prompts", str(prompts), "--csv", str(csv), "--device", "cpu", "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    for header in ("first_token_attention", "sink_rate", "max_abs_resid", "mean_gate", "loss", *VARIANTS):
        assert header in printed
    table = pd.read_csv(csv, index_col="variant")
    assert list(table.index) == list(VARIANTS)
    assert list(table.columns) == ["first_token_attention", "sink_rate", "max_abs_resid", "mean_gate", "loss"]
    assert table.loc["baseline", "mean_gate"] != table.loc["baseline", "mean_gate"]  # NaN: no gate
    assert 0 < table.loc["gate_headwise", "mean_gate"] < 1


def test_sinks_default_prompts_for_1b(released, capsys):
    assert main(["sinks", "--size", "1B", "--variants", "gate_elementwise", "--limit", "3", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "built-in prompts (3 sequences)" in captured.err
    assert "gate_elementwise" in captured.out


def test_default_prompts_choice(monkeypatch, tmp_path):
    import torch

    from gated_interp import cli

    windows = torch.zeros(4, 8, dtype=torch.long)
    monkeypatch.setattr("gated_interp.loading.bundled.heldout_tokens", lambda: windows)
    named = [cli.Variant(v, tmp_path, is_variant_name=True) for v in VARIANTS]
    folder = [cli.Variant("mine", tmp_path, is_variant_name=False)]
    assert cli.choose_prompts(None, "tiny", named)[0] is windows
    assert cli.choose_prompts(None, "tiny", folder)[0] == list(cli.DEFAULT_PROMPTS)
    assert cli.choose_prompts(None, "1B", named)[0] == list(cli.DEFAULT_PROMPTS)
    assert cli.choose_prompts(["hi there"], "tiny", named)[0] == ["hi there"]

    def missing():
        raise gated_interp.CheckpointError("not installed")

    monkeypatch.setattr("gated_interp.loading.bundled.heldout_tokens", missing)
    assert cli.choose_prompts(None, "tiny", named)[0] == list(cli.DEFAULT_PROMPTS)


def test_info_reads_config_and_headers_without_loading(released, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise AssertionError("info must not build the model")

    monkeypatch.setattr(gated_interp.HookedGatedQwen3, "__init__", refuse)
    assert main(["info", "gate_headwise", "--size", "1B"]) == 0
    printed = capsys.readouterr().out
    # tiny_config: 4 heads, 2 kv heads, d_head 16, headwise gate.
    assert "per kv group: 2 heads x 16 query rows + 2 x 1 gate rows" in printed
    assert "1B_gate_headwise" in printed
    assert "headwise" in printed
    assert "model.safetensors" in printed
    assert "F32" in printed
    assert "tokenizer:" in printed and "yes" in printed


def test_info_of_a_baseline_folder(released, capsys):
    assert main(["info", str(released / "1B_baseline")]) == 0
    printed = capsys.readouterr().out
    assert "per kv group: 2 heads x 16 query rows;" in printed
    assert "baseline" in printed


def test_unknown_variant_lists_valid_names(released, tmp_path, capsys):
    code = main(["demo", "--size", "1B", "--variants", "gate_sparse", "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert all(v in err for v in VARIANTS)
    assert main(["info", "gate_sparse"]) == 2


def test_missing_checkpoint_folder_is_a_runtime_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GATED_INTERP_CHECKPOINTS", str(tmp_path))  # no 1B_* folders in it
    code = main(["sinks", "--size", "1B", "--variants", "baseline", "--quiet"])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "1B_baseline" in err and "Traceback" not in err
    assert main(["info", "baseline", "--size", "1B"]) == 1


def test_missing_path_variant(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nowhere")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_unwritable_out_fails_before_loading(released, tmp_path, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before --out was checked")

    monkeypatch.setattr("gated_interp.loading.load.load_folder", refuse)
    monkeypatch.setattr("gated_interp.loading.resolve.resolve_checkpoint", refuse)
    a_file = tmp_path / "file.txt"
    a_file.write_text("not a folder")
    for out in (a_file, a_file / "figures"):
        code = main(["demo", "--size", "1B", "--out", str(out)])
        assert code == 2
        assert "cannot write figures" in capsys.readouterr().err


def test_prompts_file_errors(released, tmp_path, capsys):
    assert main(["sinks", "--size", "1B", "--prompts", str(tmp_path / "missing.txt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n   \n")
    assert main(["sinks", "--size", "1B", "--prompts", str(empty)]) == 2
    assert "no prompts" in capsys.readouterr().err


def test_argparse_errors_return_2(capsys):
    assert main(["demo", "--size", "7B"]) == 2
    assert main([]) == 2
    assert main(["--help"]) == 0


def test_python_m_help():
    result = subprocess.run([sys.executable, "-m", "gated_interp", "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "demo" in result.stdout and "sinks" in result.stdout and "info" in result.stdout


@pytest.mark.slow
def test_demo_on_bundled_tiny_models(tmp_path):
    require_bundled()
    out = tmp_path / "figures"
    assert main(["demo", "--size", "tiny", "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    for v in VARIANTS:
        assert is_png(out / f"{v}_selected_layer_attention_maps.png")
    assert is_png(out / FIRST_TOKEN_FIGURE)
