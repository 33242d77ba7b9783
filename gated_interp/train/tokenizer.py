"""Byte-level BPE tokenizer trained on the plain-text corpus.

Special tokens (ids fixed by their order in ``SPECIAL_TOKENS``):

* ``DOC_TOKEN = "<|doc|>"`` (id 0) starts every training window, so it is the
  tokenizer's ``bos_token``. It also serves as ``eos_token``: a document
  boundary is the start of the next document, so a separate end-of-text token
  would add a vocabulary entry that carries no extra information.
* ``PAD_TOKEN = "<|pad|>"`` (id 1) pads batches; training windows never need it
  because they all have the same length, but generation/eval code may.

``tokenizer(text)`` adds no special tokens: the model code prepends the BOS
id itself whenever ``tokenizer.bos_token_id`` is not None.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

DOC_TOKEN = "<|doc|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = [DOC_TOKEN, PAD_TOKEN]

# Lines handed to the BPE trainer per iterator item; batching keeps Python
# overhead low without holding the whole corpus as one huge string.
_LINES_PER_ITEM = 1000


def iter_corpus_text(corpus_path: Path, max_bytes: int | None = None) -> Iterator[str]:
    """Yield the corpus text in batches of whole lines (newlines kept).

    Args:
        corpus_path: UTF-8 text file.
        max_bytes: if given, only the first ``max_bytes`` bytes are read; a
            UTF-8 character cut at the boundary is dropped.

    Yields:
        Strings of up to ``_LINES_PER_ITEM`` lines each.
    """
    corpus_path = Path(corpus_path)
    if not corpus_path.is_file():
        raise FileNotFoundError(
            f"Tokenizer corpus {corpus_path} does not exist. Pass the training text "
            "with --corpus (the corpus layout is described in the corpus README.md)."
        )
    if max_bytes is not None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive or None, got {max_bytes}.")
        with corpus_path.open("rb") as f:
            # errors="ignore" drops only a multi-byte character cut at the end.
            text = f.read(max_bytes).decode("utf-8", errors="ignore")
        lines = text.splitlines(keepends=True)
        for start in range(0, len(lines), _LINES_PER_ITEM):
            yield "".join(lines[start : start + _LINES_PER_ITEM])
        return
    with corpus_path.open("r", encoding="utf-8") as f:
        batch: list[str] = []
        for line in f:
            batch.append(line)
            if len(batch) == _LINES_PER_ITEM:
                yield "".join(batch)
                batch = []
        if batch:
            yield "".join(batch)


def build_bpe_backend() -> Tokenizer:
    """An untrained byte-level BPE ``tokenizers.Tokenizer`` with the project's pipeline."""
    backend = Tokenizer(models.BPE())
    # add_prefix_space=False: the text is kept exactly, so decode(encode(x)) == x.
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    # An explicit no-op template so that nothing adds BOS/EOS behind our back.
    backend.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B:1")
    return backend


def wrap_backend(backend: Tokenizer) -> PreTrainedTokenizerFast:
    """Wrap a trained backend as a ``PreTrainedTokenizerFast`` with bos/eos/pad set.

    ``add_bos_token=False`` / ``add_eos_token=False`` keep transformers from
    rewriting the post-processor to insert specials on ``tokenizer(text)``.
    """
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=DOC_TOKEN,
        eos_token=DOC_TOKEN,
        pad_token=PAD_TOKEN,
        add_bos_token=False,
        add_eos_token=False,
        # Documents are far longer than any model context; windows are cut by
        # data.make_windows, so no length limit (and no warning) here.
        model_max_length=int(1e12),
    )


def train_bpe_tokenizer(
    corpus_path: Path, vocab_size: int = 4096, max_bytes: int | None = None
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on a text file.

    Args:
        corpus_path: UTF-8 training text (e.g. the corpus ``train.txt``).
        vocab_size: total vocabulary size including the 256 byte symbols and
            the special tokens; must exceed ``256 + len(SPECIAL_TOKENS)``.
        max_bytes: train only on the first ``max_bytes`` bytes (for fast tests).

    Returns:
        A ``PreTrainedTokenizerFast`` with ``bos_token == eos_token == DOC_TOKEN``
        and ``pad_token == PAD_TOKEN``; calling it adds no special tokens.
    """
    min_vocab = 256 + len(SPECIAL_TOKENS)
    if vocab_size <= min_vocab:
        raise ValueError(
            f"vocab_size={vocab_size} leaves no room for merges; byte-level BPE needs "
            f"more than {min_vocab} (256 bytes + {len(SPECIAL_TOKENS)} special tokens)."
        )
    backend = build_bpe_backend()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        # All 256 bytes in the base vocabulary, so any text (even unseen
        # characters) can be encoded and decoded exactly.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(iter_corpus_text(corpus_path, max_bytes), trainer=trainer)
    return wrap_backend(backend)


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, folder: Path) -> list[Path]:
    """Save a tokenizer so that ``AutoTokenizer.from_pretrained(folder)`` restores it.

    Calls ``save_pretrained`` (tokenizer.json + tokenizer_config.json) and also
    writes ``special_tokens_map.json``: transformers 5 keeps the special tokens
    only in tokenizer_config.json, but transformers 4.x tools and older
    readers look for the separate file.

    Returns:
        Paths of the files written.
    """
    folder = Path(folder)
    written = [Path(p) for p in tokenizer.save_pretrained(folder)]
    special_map = folder / "special_tokens_map.json"
    special_map.write_text(json.dumps(tokenizer.special_tokens_map, indent=2) + "\n", encoding="utf-8")
    if special_map not in written:
        written.append(special_map)
    return written
