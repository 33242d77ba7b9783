"""Progress bars only for long work on a terminal, or when asked (`gated_interp._progress`)."""

from __future__ import annotations

import io

import pytest

import gated_interp
from gated_interp import _progress
from gated_interp._progress import progress_bar, wanted


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_none_means_long_work_on_a_terminal(monkeypatch):
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert not wanted(None, long=True)  # a log or a pipe: no bar unless asked
    assert wanted(True, long=False) and not wanted(False, long=True)
    monkeypatch.setattr("sys.stderr", _Terminal())
    assert wanted(None, long=True) and not wanted(None, long=False)
    assert _progress._stderr_is_terminal()


def test_asked_for_bars_draw_even_into_a_log(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr("sys.stderr", log)
    list(progress_bar(range(3), progress=None, desc="hidden"))
    assert log.getvalue() == ""
    list(progress_bar(range(3), progress=True, desc="shown", file=log))
    assert "shown" in log.getvalue()


@pytest.mark.slow  # loads a model and its tokenizer
def test_loading_a_small_checkpoint_draws_no_bar_even_on_a_terminal(monkeypatch):
    """The bundled 3.5 MB checkpoint loads in well under a second: no bar by default."""
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    gated_interp.load_hooked("gate_headwise", size="tiny", device="cpu")
    assert terminal.getvalue() == ""
