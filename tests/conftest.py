"""Fixtures shared by the test files. Helper functions live in `helpers.py`; `tests/` is put on
`sys.path` so that test files can `from helpers import ...` and `from reference import ...`."""

from __future__ import annotations

import atexit
import os
import random
import shutil
import sys
import tempfile

import pytest
import torch
from hypothesis import configuration as hypothesis_configuration
from hypothesis import settings

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)

from helpers import GATES, make_tiny, parity_folders, parity_model  # noqa: E402

# The models here are tiny: one thread is fastest, and it avoids OpenMP threads spinning against
# other jobs on a small shared machine (2 threads under load made a 9-token forward take 0.4 s).
torch.set_num_threads(1)

# Hypothesis keeps an example database and caches in `./.hypothesis/` by default, which left a
# folder in the checkout after every run. Here: no database (a failure is reported with its
# example, not replayed on the next run), and whatever else it stores goes to a temporary folder
# removed at exit, one per process (xdist workers each get theirs), unless
# HYPOTHESIS_STORAGE_DIRECTORY names one.
settings.register_profile("gated_interp", database=None)
settings.load_profile("gated_interp")
if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
    _hypothesis_home = tempfile.mkdtemp(prefix="gated_interp_hypothesis_")
    hypothesis_configuration.set_hypothesis_home_dir(_hypothesis_home)
    atexit.register(shutil.rmtree, _hypothesis_home, ignore_errors=True)


@pytest.fixture(params=GATES)
def gate(request) -> str:
    return request.param


@pytest.fixture
def tiny_model(tmp_path, gate):
    """(model, config, state_dict) of a loaded tiny model, once per gate kind."""
    return make_tiny(tmp_path / f"tiny_{gate}", gate=gate, seed=11)


_WORDS = (
    "the a little girl boy dog cat went to garden house and saw bird tree said happy sad ran "
    "jumped over under big small queen king fairy wizard forest river stone golden silver"
).split()


@pytest.fixture(scope="session")
def bpe_tokenizer(tmp_path_factory):
    """A byte-level BPE tokenizer (vocab 300, BOS = EOS = <|doc|> id 0, PAD id 1) trained in ~0.1 s."""
    from gated_interp.train.tokenizer import train_bpe_tokenizer

    rng = random.Random(0)
    lines = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 12))) + "." for _ in range(300)]
    corpus = tmp_path_factory.mktemp("corpus") / "train.txt"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return train_bpe_tokenizer(corpus, vocab_size=300)


@pytest.fixture(scope="session")
def parity_dirs(tmp_path_factory) -> dict:
    """The RANDOM_WITH_BIASES checkpoints, written once per session: {kind: folder}."""
    return parity_folders(tmp_path_factory)


@pytest.fixture
def load_parity(parity_dirs):
    """`load_parity(kind, **load_kwargs)`: a bundled tiny model or a random model with biases, in eval mode."""

    def _load(kind, **kwargs):
        return parity_model(kind, parity_dirs, **kwargs).eval()

    return _load
