"""Fast tests of the training data pipeline on a small synthetic corpus (no shared/ needed)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from gated_interp.train.data import (
    batch_iterator,
    evaluation_windows,
    make_windows,
    pick_evaluation_windows,
    read_documents,
    tokenize_documents,
)
from gated_interp.train.tokenizer import DOC_TOKEN, PAD_TOKEN, save_tokenizer, train_bpe_tokenizer

_WORDS = (
    "the a little girl boy dog cat went to garden house and saw bird tree said "
    "happy sad ran jumped over under big small queen king fairy wizard forest "
    "river stone golden silver morning night"
).split()


def _document(rng: random.Random, n_paragraphs: int) -> str:
    """One synthetic document: paragraphs of English-like sentences, one per line."""
    paragraphs = []
    for _ in range(n_paragraphs):
        sentences = []
        for _ in range(rng.randint(1, 4)):
            words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 12))]
            sentences.append(" ".join(words).capitalize() + rng.choice([".", "!", "?", ","]))
        paragraphs.append(" ".join(sentences))
    # Some non-ASCII and quoting, as in the real corpus.
    paragraphs.append('"Café," said the naïve wizard -- £3 ſo \'twas.')
    return "\n".join(paragraphs)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A ~10 KB corpus file of 5 documents in the project format, and its documents."""
    rng = random.Random(0)
    docs = [_document(rng, n) for n in (12, 20, 6, 15, 9)]
    path = tmp_path_factory.mktemp("corpus") / "train.txt"
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return path, docs


@pytest.fixture(scope="module")
def tokenizer(corpus):
    return train_bpe_tokenizer(corpus[0], vocab_size=300)


def test_read_documents_splits_on_blank_lines(corpus):
    path, docs = corpus
    assert read_documents(path) == docs


def test_read_documents_missing_file_names_flag(tmp_path):
    with pytest.raises(FileNotFoundError, match="--corpus"):
        read_documents(tmp_path / "nope.txt")


def test_read_documents_empty_file(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no text"):
        read_documents(path)


def test_train_tokenizer_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="--corpus"):
        train_bpe_tokenizer(tmp_path / "nope.txt", vocab_size=300)


def test_tokenizer_specials_and_no_auto_bos(tokenizer):
    assert len(tokenizer) == 300
    assert tokenizer.bos_token == DOC_TOKEN and tokenizer.pad_token == PAD_TOKEN
    assert tokenizer.bos_token_id is not None and tokenizer.pad_token_id is not None
    ids = tokenizer("The little girl")["input_ids"]
    assert tokenizer.bos_token_id not in ids and tokenizer.pad_token_id not in ids


def test_max_bytes_limits_training_text(corpus):
    # Cutting inside "é" must not crash; the vocab is still complete.
    tok = train_bpe_tokenizer(corpus[0], vocab_size=280, max_bytes=501)
    assert tok.decode(tok("Café ſ £")["input_ids"]) == "Café ſ £"


def test_exact_decode_round_trip(tokenizer, corpus):
    text = "\n".join(corpus[1][:2]) + "\n  odd   spacing\tand 日本語 ✓ \n"
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text


def test_save_and_autotokenizer_reload(tokenizer, corpus, tmp_path):
    save_tokenizer(tokenizer, tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tmp_path / name).is_file(), name
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    text = corpus[1][0]
    assert reloaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert reloaded.bos_token == DOC_TOKEN and reloaded.pad_token == PAD_TOKEN
    assert reloaded.bos_token_id == tokenizer.bos_token_id
    assert reloaded.pad_token_id == tokenizer.pad_token_id
    assert len(reloaded) == len(tokenizer)
    # The reloaded tokenizer must not start adding BOS either.
    assert reloaded.bos_token_id not in reloaded("The little girl")["input_ids"]
    assert reloaded.decode(reloaded(text)["input_ids"]) == text


def test_tokenize_documents_round_trip(tokenizer, corpus):
    docs = corpus[1]
    doc_ids = tokenize_documents(tokenizer, docs, progress=False)
    assert len(doc_ids) == len(docs)
    for ids, doc in zip(doc_ids, docs):
        assert ids.ndim == 1 and ids.dtype in (torch.int32, torch.int64)
        assert tokenizer.decode(ids.tolist()) == doc
        # Line-wise batch encoding equals encoding the whole document.
        assert ids.tolist() == tokenizer(doc)["input_ids"]


def test_make_windows_shape_and_bos():
    bos, seq_len = 7, 5
    docs = [torch.arange(100, 110), torch.arange(200, 203), torch.arange(300, 308)]
    windows = make_windows(docs, bos, seq_len)
    # 10 // 4 = 2, 3 // 4 = 0 (too short), 8 // 4 = 2; trailing partial chunks dropped.
    assert windows.shape == (4, seq_len) and windows.dtype == torch.long
    assert (windows[:, 0] == bos).all()
    assert windows[:2, 1:].flatten().tolist() == list(range(100, 108))
    assert windows[2:, 1:].flatten().tolist() == list(range(300, 308))


def test_make_windows_rejects_short_seq_len():
    with pytest.raises(ValueError, match="seq_len"):
        make_windows([torch.arange(10)], 0, 1)


def _batches(windows: torch.Tensor, seed: int, n_steps: int) -> list[torch.Tensor]:
    return list(batch_iterator(windows, batch_size=4, seed=seed, n_steps=n_steps))


def test_batch_order_deterministic_per_seed():
    windows = torch.arange(10 * 3).reshape(10, 3)
    first, again, other = _batches(windows, 0, 7), _batches(windows, 0, 7), _batches(windows, 1, 7)
    assert all(b.shape == (4, 3) and b.dtype == torch.long for b in first)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    # Each epoch (2 batches of 4 out of 10) draws distinct windows; epochs reshuffle.
    epoch0 = torch.cat(first[:2])[:, 0].tolist()
    epoch1 = torch.cat(first[2:4])[:, 0].tolist()
    assert len(set(epoch0)) == 8 and epoch0 != epoch1
    # Resuming at a step gives the same batches as an uninterrupted run.
    resumed = list(batch_iterator(windows, batch_size=4, seed=0, n_steps=3, start_step=4))
    assert all(torch.equal(a, b) for a, b in zip(first[4:], resumed))


def test_batch_size_larger_than_data_fails():
    with pytest.raises(ValueError, match="batch_size"):
        next(batch_iterator(torch.zeros(3, 4, dtype=torch.long), batch_size=5, seed=0, n_steps=1))


def test_pick_evaluation_windows_round_robin():
    per_doc = [torch.full((n, 2), d) for d, n in enumerate((1, 5, 3))]
    picked = pick_evaluation_windows(per_doc, max_windows=6)
    # Quotas: doc0 1 (exhausted), doc1 3, doc2 2; rows grouped by document.
    assert picked[:, 0].tolist() == [0, 1, 1, 1, 2, 2]
    assert pick_evaluation_windows(per_doc, max_windows=100).shape == (9, 2)


def test_evaluation_windows_deterministic(tokenizer, corpus):
    path = corpus[0]
    a = evaluation_windows(tokenizer, path, seq_len=16, max_windows=12)
    b = evaluation_windows(tokenizer, path, seq_len=16, max_windows=12)
    assert a.shape == (12, 16) and torch.equal(a, b)
    assert (a[:, 0] == tokenizer.bos_token_id).all()
