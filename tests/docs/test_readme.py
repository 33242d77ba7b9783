"""The README's Python examples run as written, in order, on the bundled tiny models."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import matplotlib
import pytest
from helpers import require_bundled

matplotlib.use("Agg")
README = Path(__file__).resolve().parents[2] / "README.md"


# The README's Qwen3.5 example names a folder a user downloads; here it runs on a tiny random Qwen3.5
# folder in the released layout (vision tower included), with the bundled tokenizer's vocabulary size
# so that the quickstart's tokens are valid ids.
QWEN_PLACEHOLDER = "path/to/Qwen3.5-0.8B"


@pytest.mark.slow
def test_readme_python_examples_run(tmp_path):
    require_bundled()
    from hybrid_models import hybrid_checkpoint

    qwen_folder = tmp_path / "Qwen3.5-0.8B"
    hybrid_checkpoint("qwen3_5", qwen_folder, seed=0, vocab_size=4096)
    text = README.read_text()
    assert QWEN_PLACEHOLDER in text, "the README's Qwen3.5 example should load a folder"
    blocks = re.findall(r"```python\n(.*?)```", text.replace(QWEN_PLACEHOLDER, str(qwen_folder)), flags=re.DOTALL)
    assert len(blocks) >= 3, "the README should show the quickstart, analysis and patching examples"
    namespace: dict = {}
    printed = io.StringIO()
    for block in blocks:
        with contextlib.redirect_stdout(printed):
            exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - our own README
    # The output the README shows ("this prints") is what the examples print.
    shown = re.findall(r"this prints\n\n```\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert shown, "the README should show what its patching example prints"
    for line in "".join(shown).splitlines():
        assert line in printed.getvalue().splitlines(), f"the README shows {line!r}, the example prints otherwise"
    assert namespace["z_effect"].shape == (namespace["model"].cfg.n_layers, namespace["model"].cfg.n_heads)
    assert namespace["loss_open"].ndim == 0


@pytest.mark.parametrize("bundle", ["tiny", "tiny_hybrid"])
def test_readme_table_of_the_bundled_models_is_the_model_card(bundle):
    """The README's tables of the bundled models quote metrics.json, the figures test_bundled and
    test_bundled_hybrid re-measure ("-" where a quantity does not apply: no gate, no attention pattern)."""
    from gated_interp.loading.bundled import bundled_metrics

    def per_layer(values: list[float | None], fmt: str) -> str:
        return " / ".join("-" if x is None else fmt.format(x) for x in values)

    section = README.read_text().split("## Bundled tiny models", 1)[1].split("\n## ", 1)[0]
    rows = {line.split("|")[1].strip(): line for line in section.splitlines() if line.startswith("| ")}
    for variant, m in bundled_metrics(bundle)["variants"].items():
        cells = [cell.strip() for cell in rows[variant].strip("|").split("|")]
        expected = [
            variant,
            f"{m['loss']:.3f}",
            f"{m['first_token_attention']:.3f}",
            per_layer(m["first_token_attention_by_layer"], "{:.3f}"),
            per_layer(m["max_abs_resid_by_layer"], "{:.1f}"),
            f"{m['sink_rate']:.3f}",
            "-" if m.get("mean_gate") is None else f"{m['mean_gate']:.3f}",
        ]
        assert cells == expected, f"README row of {variant}: {cells}, metrics.json: {expected}"


def test_ci_runs_the_readmes_set_up_and_test_commands():
    """.ci/run executes the README's marked blocks: torch pinned first (a bare torch requirement
    pulls the multi-GB CUDA build from public PyPI), then the project, the demo and the tests."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("readme_commands", README.parent / ".ci" / "readme_commands.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    setup, test = module.commands("setup"), module.commands("test")
    assert setup[0] == "pip install torch==2.13.0", setup
    assert setup[1] == 'pip install -e ".[dev,notebooks]"' and setup[2].startswith("gated-interp demo --size tiny")
    assert test == ["python -m pytest -n 2 -q"]
    run = (README.parent / ".ci" / "run").read_text()
    assert "readme_commands.py setup" in run and "readme_commands.py test" in run


def test_readme_demo_figures_of_the_hybrid_pair_state_what_the_demo_measures():
    """The sentence under the pair's demo figures: layer 3's first-token attention on the demo prompt."""
    import torch

    import gated_interp
    from gated_interp.analysis import first_token_attention
    from gated_interp.cli.common import DEMO_PROMPT

    sentence = README.read_text().split("draws the\nauthors' figure for the pair", 1)[1].split("![", 1)[0]
    stated = [float(x) for x in re.findall(r"0\.\d\d", sentence)]
    measured = []
    for variant in ("hybrid_ungated", "hybrid_gated"):
        model = gated_interp.load_hooked(variant, size="tiny", progress=False)
        with torch.no_grad():
            _, cache = model.run_with_cache(DEMO_PROMPT)
        measured.append(float(first_token_attention(cache)[3].mean()))
    assert stated == pytest.approx(measured, abs=0.005 + 1e-9)


def test_readme_second_seed_of_the_hybrid_pair_is_the_cards():
    """The README's sentence on the hybrid pair's second seed quotes its card's metrics.json."""
    from gated_interp.loading.bundled import bundled_metrics

    seed = bundled_metrics("tiny_hybrid")["seeds"]["1"]
    gated, ungated = seed["hybrid_gated"], seed["hybrid_ungated"]
    sentence = README.read_text().split("A second seed of the same recipe (the card's", 1)[1].split("Notebook 05", 1)[0]
    sentence = " ".join(sentence.split())
    attention = ungated["first_token_attention_by_layer"][3], gated["first_token_attention_by_layer"][3]
    assert (
        f"({attention[0]:.3f} without the gate, {attention[1]:.3f} with it: {attention[0] / attention[1]:.1f}x)"
        in sentence
    )
    assert f"({gated['loss'] - ungated['loss']:+.3f} nats)" in sentence
    resid = [" / ".join(f"{x:.1f}" for x in m["max_abs_resid_by_layer"]) for m in (ungated, gated)]
    assert f"({resid[0]} against {resid[1]} gated)" in sentence
