"""A small synthetic corpus and the smallest training options, for the training and card tests."""

from __future__ import annotations

import random

WORDS = "the a little girl boy cat dog ran saw big small red house tree and then said she he it was".split()


def write_corpus(folder, n_docs: int, seed: int) -> None:
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        paragraphs = [" ".join(rng.choice(WORDS) for _ in range(40)).capitalize() + "." for _ in range(12)]
        docs.append("\n".join(paragraphs))
    (folder / ("train.txt" if seed == 0 else "valid.txt")).write_text("\n\n".join(docs) + "\n")


# The smallest model and run the trainer accepts: each test adds its own --tokens, --out, ...
TINY_ARGS = [
    "--vocab-size", "300", "--d-model", "32", "--n-layers", "2", "--n-heads", "4", "--n-key-value-heads", "2",
    "--d-head", "8", "--d-mlp", "64", "--seq-len", "32", "--batch-size", "8", "--warmup-steps", "2",
    "--eval-windows", "2", "--threads", "1",
]  # fmt: skip
