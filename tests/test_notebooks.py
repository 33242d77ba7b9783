"""Every notebook runs top to bottom on the bundled tiny models without a cell raising.

Executed with papermill (kernel `python3`, working directory `notebooks/`) into a temporary copy,
so the committed notebooks and their outputs are left alone.
"""

from __future__ import annotations

import time
from pathlib import Path

import papermill  # a dev dependency: missing, it fails the run rather than skipping the notebooks
import pytest
from helpers import require_bundled

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = ("01_quickstart", "02_attention_sinks", "03_gate_sparsity", "04_patching")


def test_every_notebook_is_tested():
    assert sorted(p.stem for p in NOTEBOOKS_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name: str, tmp_path: Path) -> None:
    require_bundled()
    started = time.time()
    # A cell that raises makes papermill raise PapermillExecutionError, which fails the test.
    papermill.execute_notebook(
        str(NOTEBOOKS_DIR / f"{name}.ipynb"),
        str(tmp_path / f"{name}.ipynb"),
        parameters={"SIZE": "tiny", "DEVICE": "cpu"},
        kernel_name="python3",
        cwd=str(NOTEBOOKS_DIR),
        progress_bar=False,
    )
    print(f"{name}: {time.time() - started:.1f} s")
