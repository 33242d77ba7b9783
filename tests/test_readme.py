"""The README's Python examples run as written, in order, on the bundled tiny models."""

from __future__ import annotations

import contextlib
import io
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
