"""The `corpus` fixture of the training and card tests: six training and two held-out documents."""

from __future__ import annotations

import pytest
from training_corpus import write_corpus


@pytest.fixture
def corpus(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    write_corpus(folder, n_docs=6, seed=0)
    write_corpus(folder, n_docs=2, seed=1)
    return folder
