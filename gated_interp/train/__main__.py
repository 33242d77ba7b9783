"""`python -m gated_interp.train`: train the tiny variants (baseline, gate_headwise, gate_elementwise).

    python -m gated_interp.train --corpus CORPUS_DIR                  # writes runs/tiny
    python -m gated_interp.train.card --run runs/tiny --corpus CORPUS_DIR --out OUT_DIR

CORPUS_DIR holds `train.txt` and `valid.txt`: plain UTF-8 text, documents separated by one blank
line. The books the bundled models were trained on are listed in
`gated_interp/checkpoints/tiny/CORPUS.md`. Training never writes into the bundled models' folder
(`gated_interp/checkpoints/tiny`); `gated_interp.train.card` copies a finished run there only when
told to with `--out`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from gated_interp.loading.bundled import TINY_DIR
from gated_interp.train.data import evaluation_windows, make_windows, read_documents, tokenize_documents
from gated_interp.train.tokenizer import save_tokenizer, train_bpe_tokenizer
from gated_interp.train.trainer import VARIANT_GATES, TrainConfig, default_architecture, train_variants

# Fields settable from the command line (as --d-model, --lr, ...): the architecture's go into
# TrainConfig.model (a GatedQwen3Config), the others into TrainConfig itself.
MODEL_INT_OPTIONS = ("d_model", "n_layers", "n_heads", "n_key_value_heads", "d_head", "d_mlp")
MODEL_FLOAT_OPTIONS = ("rope_theta",)
INT_OPTIONS = (
    "seq_len",
    "batch_size",
    "warmup_steps",
    "eval_interval",
    "eval_windows",
    "save_interval",
    "seed",
)
FLOAT_OPTIONS = ("lr", "weight_decay")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(
        prog="python -m gated_interp.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", type=Path, required=True, help="folder with train.txt and valid.txt")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("runs/tiny"),
        help="output folder, one sub-folder per variant; default: runs/tiny (never the bundled models' folder)",
    )
    parser.add_argument("--variants", nargs="+", default=list(defaults.variants), choices=list(VARIANT_GATES))
    parser.add_argument("--tokens", type=float, default=defaults.total_tokens, help="training tokens per variant")
    parser.add_argument("--max-minutes", type=float, default=None, help="stop early after this wall time")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--max-corpus-bytes", type=int, default=None, help="use only the start of train.txt")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    for name in MODEL_INT_OPTIONS:
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults.model, name))
    for name in INT_OPTIONS:
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name))
    for name in MODEL_FLOAT_OPTIONS:
        parser.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(defaults.model, name))
    for name in FLOAT_OPTIONS:
        parser.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(defaults, name))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.out.resolve() == TINY_DIR.resolve() or TINY_DIR.resolve() in args.out.resolve().parents:
        print(
            f"error: --out {args.out} is inside the bundled models' folder; train into another folder "
            "(default runs/tiny) and copy a finished run with python -m gated_interp.train.card",
            file=sys.stderr,
        )
        return 2
    train_path, valid_path = args.corpus / "train.txt", args.corpus / "valid.txt"
    for path in (train_path, valid_path):
        if not path.is_file():
            print(f"error: {path} not found; --corpus must be a folder with train.txt and valid.txt", file=sys.stderr)
            return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    architecture = default_architecture(
        d_vocab=args.vocab_size,
        n_ctx=args.seq_len,
        **{name: getattr(args, name) for name in MODEL_INT_OPTIONS + MODEL_FLOAT_OPTIONS},
    )
    train = TrainConfig(
        variants=tuple(args.variants),
        model=architecture,
        total_tokens=int(args.tokens),
        **{name: getattr(args, name) for name in INT_OPTIONS + FLOAT_OPTIONS},
    )
    started = time.time()
    tokenizer = train_bpe_tokenizer(train_path, vocab_size=args.vocab_size, max_bytes=args.max_corpus_bytes)
    train.model = replace(train.model, d_vocab=len(tokenizer))  # BPE may stop short of --vocab-size
    documents = read_documents(train_path)
    if args.max_corpus_bytes:
        documents = _truncate(documents, args.max_corpus_bytes)
    train_windows = make_windows(tokenize_documents(tokenizer, documents), tokenizer.bos_token_id, train.seq_len)
    eval_windows = evaluation_windows(tokenizer, valid_path, train.seq_len, train.eval_windows)
    print(
        f"tokenizer and data ready in {time.time() - started:.0f} s: {train_windows.shape[0]} training windows "
        f"of {train.seq_len} tokens, {eval_windows.shape[0]} held-out windows; {train.n_steps} steps planned"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    save_tokenizer(tokenizer, args.out / "_tokenizer")
    train_variants(train, train_windows, eval_windows, tokenizer, args.out, max_minutes=args.max_minutes)
    for variant in train.variants:
        save_tokenizer(tokenizer, args.out / variant)
    corpus_info = {
        "corpus": args.corpus.name,  # the folder's name only: the card must not carry local paths
        "train_bytes": train_path.stat().st_size,
        "training_windows": int(train_windows.shape[0]),
        "eval_windows": int(eval_windows.shape[0]),
    }
    (args.out / "corpus_info.json").write_text(json.dumps(corpus_info, indent=2) + "\n")
    return 0


def _truncate(documents: list[str], max_bytes: int) -> list[str]:
    kept, total = [], 0
    for doc in documents:
        if total >= max_bytes:
            break
        kept.append(doc[: max_bytes - total])
        total += len(kept[-1])
    return kept


if __name__ == "__main__":
    raise SystemExit(main())
