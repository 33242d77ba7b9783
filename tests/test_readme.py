"""The README's Python examples run as written, in order, on the bundled tiny models."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib
from helpers import require_bundled

matplotlib.use("Agg")
README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_examples_run():
    require_bundled()
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert len(blocks) >= 3, "the README should show the quickstart, analysis and patching examples"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - our own README
    assert namespace["z_effect"].shape == (namespace["model"].cfg.n_layers, namespace["model"].cfg.n_heads)
    assert namespace["loss_open"].ndim == 0
