"""Corpus reading, tokenization, fixed-length windows and deterministic batches.

Pipeline: ``read_documents`` -> ``tokenize_documents`` -> ``make_windows`` ->
``batch_iterator`` (training) or ``evaluation_windows`` (held-out loss).

Every window is ``[bos_id] + seq_len-1 consecutive tokens of one document``:
windows never straddle two documents and always start with the doc token.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

# Paragraph lines encoded per encode_batch call; large enough for the Rust
# thread pool to stay busy, small enough for a smooth progress bar.
_ENCODE_BATCH_LINES = 4096

_CORPUS_HINT = (
    "Pass the corpus folder with --corpus: it holds train.txt and valid.txt, plain UTF-8 text with "
    "documents separated by one blank line. The books the bundled models were trained on are listed, "
    "with their Project Gutenberg numbers, in gated_interp/checkpoints/tiny/CORPUS.md."
)


def read_documents(path: Path) -> list[str]:
    """Read a corpus file and split it into documents on blank lines.

    Args:
        path: UTF-8 text file, documents separated by exactly one blank line.

    Returns:
        The non-empty documents, without their trailing newlines.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Corpus file {path} does not exist. {_CORPUS_HINT}")
    text = path.read_text(encoding="utf-8")
    # strip("\n") per document: the file's final newline must not become part
    # of the last document, and a stray extra blank line must not make an
    # empty document.
    documents = [doc.strip("\n") for doc in text.split("\n\n")]
    documents = [doc for doc in documents if doc]
    if not documents:
        raise ValueError(f"Corpus file {path} holds no text. {_CORPUS_HINT}")
    return documents


def tokenize_documents(
    tokenizer: PreTrainedTokenizerBase, documents: Sequence[str], progress: bool = True
) -> list[torch.Tensor]:
    """Encode each document to token ids, without special tokens.

    Documents are encoded paragraph line by paragraph line (newline kept on each
    line) in large batches, which parallelises well even though the corpus has
    few, very long documents. The byte-level pre-tokenizer always makes "\\n" a
    token boundary, so this equals encoding the whole document at once unless a
    line starts with whitespace (the project corpus has none); either way the
    ids decode back to the document exactly.

    Args:
        tokenizer: a fast (``tokenizers``-backed) tokenizer.
        documents: D document strings.
        progress: show a tqdm bar over lines.

    Returns:
        D int32 tensors of shape [n_tokens_d].
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TypeError(
            f"tokenize_documents needs a fast tokenizer (PreTrainedTokenizerFast), got "
            f"{type(tokenizer).__name__}; load it with AutoTokenizer.from_pretrained(..., use_fast=True)."
        )
    lines: list[str] = []
    lines_per_doc: list[int] = []
    for doc in documents:
        doc_lines = doc.splitlines(keepends=True)
        lines.extend(doc_lines)
        lines_per_doc.append(len(doc_lines))

    line_ids: list[list[int]] = []
    bar = tqdm(total=len(lines), desc="tokenizing", unit="line", disable=not progress)
    for start in range(0, len(lines), _ENCODE_BATCH_LINES):
        batch = lines[start : start + _ENCODE_BATCH_LINES]
        encodings = backend.encode_batch(batch, add_special_tokens=False)
        line_ids.extend(enc.ids for enc in encodings)
        bar.update(len(batch))
    bar.close()

    doc_ids: list[torch.Tensor] = []
    cursor = 0
    for n_lines in lines_per_doc:
        flat = list(itertools.chain.from_iterable(line_ids[cursor : cursor + n_lines]))
        doc_ids.append(torch.tensor(flat, dtype=torch.int32))
        cursor += n_lines
    return doc_ids


def document_windows(ids: torch.Tensor, bos_id: int, seq_len: int) -> torch.Tensor:
    """Cut one document into BOS-prefixed windows.

    The document is split into consecutive, non-overlapping chunks of
    ``seq_len - 1`` tokens; the trailing chunk shorter than that is dropped
    (padding it would waste compute on pad tokens, and at most seq_len-2
    tokens per document are lost). A document shorter than ``seq_len - 1``
    tokens therefore yields no window.

    Args:
        ids: [n_tokens] token ids of one document.
        bos_id: id prepended to every window (the doc token).
        seq_len: window length including the BOS token, >= 2.

    Returns:
        LongTensor [n_windows, seq_len], n_windows = n_tokens // (seq_len - 1).
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2 (BOS + at least one token), got {seq_len}.")
    chunk = seq_len - 1
    n_windows = ids.numel() // chunk
    body = ids[: n_windows * chunk].to(torch.long).reshape(n_windows, chunk)
    bos = torch.full((n_windows, 1), bos_id, dtype=torch.long)
    return torch.cat([bos, body], dim=1)


def make_windows(doc_ids: Sequence[torch.Tensor], bos_id: int, seq_len: int) -> torch.Tensor:
    """Windows of all documents, in document order (see ``document_windows``).

    Args:
        doc_ids: D tensors [n_tokens_d].
        bos_id: id starting every window.
        seq_len: window length including BOS.

    Returns:
        LongTensor [sum_d n_tokens_d // (seq_len - 1), seq_len].
    """
    per_doc = [document_windows(ids, bos_id, seq_len) for ids in doc_ids]
    if not per_doc:
        return torch.empty((0, seq_len), dtype=torch.long)
    return torch.cat(per_doc, dim=0)


def _epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed for one epoch's permutation, stable across platforms and runs.

    Hashing (seed, epoch) instead of e.g. seed + epoch keeps seed 0's epoch 1
    from equalling seed 1's epoch 0.
    """
    digest = hashlib.sha256(f"gated_interp:{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class WindowSampler:
    """Deterministic shuffled batches of windows, addressable by step.

    Epoch e uses a permutation of all windows seeded from (seed, e); each epoch
    yields ``len(windows) // batch_size`` batches and the leftover windows of
    that permutation are skipped (they are shuffled in next epoch). Batch
    ``step`` is a pure function of (windows, batch_size, seed, step), so runs
    with the same seed see the same data in the same order, and a resumed run
    can continue at any step.
    """

    def __init__(self, windows: torch.Tensor, batch_size: int, seed: int) -> None:
        """Args: windows LongTensor [n_windows, seq_len]; batch_size <= n_windows."""
        if windows.ndim != 2:
            raise ValueError(f"windows must be [n_windows, seq_len], got shape {tuple(windows.shape)}.")
        if batch_size < 1 or batch_size > windows.shape[0]:
            raise ValueError(
                f"batch_size={batch_size} must be between 1 and the number of windows "
                f"({windows.shape[0]}); use a smaller batch or a shorter seq_len / more text."
            )
        self.windows = windows
        self.batch_size = batch_size
        self.seed = seed
        self.batches_per_epoch = windows.shape[0] // batch_size
        self._epoch = -1
        self._perm = torch.empty(0, dtype=torch.long)

    def _permutation(self, epoch: int) -> torch.Tensor:
        """[n_windows] window order for ``epoch`` (cached for the current epoch)."""
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
            self._perm = torch.randperm(self.windows.shape[0], generator=gen)
            self._epoch = epoch
        return self._perm

    def batch(self, step: int) -> torch.Tensor:
        """LongTensor [batch_size, seq_len] for global step ``step`` (>= 0)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}.")
        epoch, index = divmod(step, self.batches_per_epoch)
        perm = self._permutation(epoch)
        rows = perm[index * self.batch_size : (index + 1) * self.batch_size]
        return self.windows[rows]


def batch_iterator(
    windows: torch.Tensor, batch_size: int, seed: int, n_steps: int, start_step: int = 0
) -> Iterator[torch.Tensor]:
    """Yield ``n_steps`` batches [batch_size, seq_len] for steps start_step.. (see WindowSampler)."""
    sampler = WindowSampler(windows, batch_size, seed)
    for step in range(start_step, start_step + n_steps):
        yield sampler.batch(step)


def pick_evaluation_windows(per_doc: Sequence[torch.Tensor], max_windows: int) -> torch.Tensor:
    """Deterministically pick up to ``max_windows`` windows spread over documents.

    Quotas are dealt round-robin over documents (one window each per round,
    skipping exhausted documents), so short and long documents are both
    represented; within a document the chosen windows are evenly spaced over
    its length rather than the first ones, which would over-weight title
    pages and prefaces.

    Args:
        per_doc: D LongTensors [n_windows_d, seq_len].
        max_windows: upper bound on the number of windows returned.

    Returns:
        LongTensor [min(max_windows, sum_d n_windows_d), seq_len], grouped by document.
    """
    if max_windows < 1:
        raise ValueError(f"max_windows must be >= 1, got {max_windows}.")
    available = [w.shape[0] for w in per_doc]
    quota = [0] * len(per_doc)
    remaining = min(max_windows, sum(available))
    while remaining > 0:
        for d, n in enumerate(available):
            if remaining > 0 and quota[d] < n:
                quota[d] += 1
                remaining -= 1
    picked = []
    for windows, q in zip(per_doc, quota):
        if q == 0:
            continue
        # Evenly spaced rows from first to last (a single pick takes row 0).
        rows = torch.linspace(0, windows.shape[0] - 1, q).round().to(torch.long)
        picked.append(windows[rows])
    if not picked:
        raise ValueError("No evaluation windows: every document is shorter than seq_len - 1 tokens.")
    return torch.cat(picked, dim=0)


def evaluation_windows(
    tokenizer: PreTrainedTokenizerBase,
    valid_path: Path,
    seq_len: int,
    max_windows: int,
    progress: bool = False,
) -> torch.Tensor:
    """Fixed held-out windows from a validation file (no randomness involved).

    Args:
        tokenizer: fast tokenizer with ``bos_token_id`` set.
        valid_path: validation text (same format as the training corpus).
        seq_len: window length including BOS.
        max_windows: how many windows to keep at most.
        progress: show a tokenization progress bar.

    Returns:
        LongTensor [<= max_windows, seq_len], every row starting with bos_token_id.
    """
    if tokenizer.bos_token_id is None:
        raise ValueError("The tokenizer has no bos_token; train it with train_bpe_tokenizer.")
    doc_ids = tokenize_documents(tokenizer, read_documents(valid_path), progress=progress)
    per_doc = [document_windows(ids, tokenizer.bos_token_id, seq_len) for ids in doc_ids]
    return pick_evaluation_windows(per_doc, max_windows)
