"""`python -m gated_interp.train`: train the tiny variants (baseline, gate_headwise, gate_elementwise).

    python -m gated_interp.train --corpus CORPUS_DIR                  # writes runs/tiny
    python -m maintainer.model_card --run runs/tiny --corpus CORPUS_DIR --out OUT_DIR

In Qwen3.5's layout (`--layout qwen3_5`: Gated DeltaNet on three layers of four, full attention
on the fourth, norms of 1 + w, rotary on a quarter of each head), the pair hybrid_gated (the gate
per query head, elementwise, as Qwen3.5 ships) and hybrid_ungated (the same model without it),
saved as Qwen3.5 text folders that transformers' Qwen3_5ForCausalLM loads:

    python -m gated_interp.train --corpus CORPUS_DIR --layout qwen3_5 --out runs/hybrid

Stopping and resuming: a run stopped by --max-minutes, --stop-after-steps or an interruption
continues from its last checkpoint (every --save-interval steps) with

    python -m gated_interp.train --corpus CORPUS_DIR --resume runs/tiny

which restores the weights, AdamW state, step (and so the position in the data order), RNG state
and log of every variant, and reads all other settings from the run folder (the flags that shape
the run are ignored). The log, the summary and the card count all tokens since step 0.

Using several cores: the variants share only their data and seed, so each can train in its own
process, e.g. on two cores

    python -m gated_interp.train --corpus C --threads 1 --variants baseline --out runs/a &
    python -m gated_interp.train --corpus C --threads 1 --variants gate_headwise gate_elementwise --out runs/b
    python -m maintainer.model_card --run runs/a runs/b --corpus C --out OUT_DIR

Same flags in every process give the same tokenizer, data order and initial weights as one
process training all variants; the card combines the run folders (and checks that they agree).

CORPUS_DIR holds `train.txt` and `valid.txt`: plain UTF-8 text, documents separated by one blank
line. The books the bundled models were trained on are listed in
`gated_interp/checkpoints/tiny/CORPUS.md`. Training never writes into the bundled models' folder
(`gated_interp/checkpoints/`); the maintainer command `python -m maintainer.model_card` (run from
a clone's root: it is not installed) copies a finished run there only when told to with `--out`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from transformers import AutoTokenizer

from gated_interp.loading.resolve import BUNDLED_DIR
from gated_interp.train.data import evaluation_windows, make_windows, read_documents, tokenize_documents
from gated_interp.train.tokenizer import save_tokenizer, train_bpe_tokenizer
from gated_interp.train.trainer import (
    ARCHITECTURES,
    CONFIG_FILE,
    LAYOUT_VARIANTS,
    STATE_FILE,
    TRAINABLE_VARIANT_GATES,
    TrainConfig,
    train_variants,
)

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
    parser.add_argument(
        "--layout",
        choices=list(LAYOUT_VARIANTS),
        default="qwen3",
        help="qwen3: the paper's models (default); qwen3_5: Qwen3.5's hybrid layout (3 Gated DeltaNet : 1 "
        "full-attention layers), variants hybrid_gated and hybrid_ungated",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        default=None,
        choices=list(TRAINABLE_VARIANT_GATES),
        help="default: every variant of --layout",
    )
    parser.add_argument("--tokens", type=float, default=defaults.total_tokens, help="training tokens per variant")
    parser.add_argument("--max-minutes", type=float, default=None, help="stop early after this wall time")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--max-corpus-bytes", type=int, default=None, help="use only the start of train.txt")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its last checkpoint (its own settings; --out is RUN_DIR)",
    )
    parser.add_argument(
        "--stop-after-steps", type=int, default=None, metavar="N", help="stop after N steps in all (resumable)"
    )
    for name in MODEL_INT_OPTIONS:
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults.model, name))
    for name in INT_OPTIONS:
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name))
    for name in MODEL_FLOAT_OPTIONS:
        parser.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(defaults.model, name))
    for name in FLOAT_OPTIONS:
        parser.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(defaults, name))
    parser.add_argument(
        "--qk-norm",
        action=argparse.BooleanOptionalAction,
        default=defaults.model.use_qk_norm,
        help="per-head RMSNorm of queries and keys, as in Qwen3 (default: on)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    layout_variants = LAYOUT_VARIANTS[args.layout]
    if args.variants is None:
        args.variants = list(layout_variants)
    elif args.resume is None and not set(args.variants) <= set(layout_variants):
        print(
            f"error: --variants {' '.join(args.variants)}: the {args.layout} layout trains {list(layout_variants)}"
            + ("" if args.layout == "qwen3_5" else "; add --layout qwen3_5 for the hybrid pair"),
            file=sys.stderr,
        )
        return 2
    if args.resume is not None:
        args.out = args.resume
    if args.out.resolve() == BUNDLED_DIR.resolve() or BUNDLED_DIR.resolve() in args.out.resolve().parents:
        print(
            f"error: --out {args.out} is inside the bundled models' folder; train into another folder "
            "(default runs/tiny) and copy a finished run with python -m maintainer.model_card",
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
    started = time.time()
    if args.resume is not None:
        config_path = args.resume / CONFIG_FILE
        if not (config_path.is_file() and (args.resume / STATE_FILE).is_file()):
            print(
                f"error: --resume {args.resume}: no {CONFIG_FILE} and {STATE_FILE} there; give the folder of an "
                "earlier run that saved at least one checkpoint",
                file=sys.stderr,
            )
            return 2
        train = TrainConfig.from_dict(json.loads(config_path.read_text()))
        tokenizer = AutoTokenizer.from_pretrained(args.resume / "_tokenizer")
    else:
        try:
            architecture = ARCHITECTURES[args.layout](
                d_vocab=args.vocab_size,
                n_ctx=args.seq_len,
                use_qk_norm=args.qk_norm,
                **{name: getattr(args, name) for name in MODEL_INT_OPTIONS + MODEL_FLOAT_OPTIONS},
            )
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        train = TrainConfig(
            variants=tuple(args.variants),
            model=architecture,
            total_tokens=int(args.tokens),
            extra={"max_corpus_bytes": args.max_corpus_bytes},
            **{name: getattr(args, name) for name in INT_OPTIONS + FLOAT_OPTIONS},
        )
        tokenizer = train_bpe_tokenizer(train_path, vocab_size=args.vocab_size, max_bytes=args.max_corpus_bytes)
        train.model = replace(train.model, d_vocab=len(tokenizer))  # BPE may stop short of --vocab-size
    max_corpus_bytes = train.extra.get("max_corpus_bytes")
    documents = read_documents(train_path)
    if max_corpus_bytes:
        documents = _truncate(documents, max_corpus_bytes)
    train_windows = make_windows(tokenize_documents(tokenizer, documents), tokenizer.bos_token_id, train.seq_len)
    eval_windows = evaluation_windows(tokenizer, valid_path, train.seq_len, train.eval_windows)
    print(
        f"tokenizer and data ready in {time.time() - started:.0f} s: {train_windows.shape[0]} training windows "
        f"of {train.seq_len} tokens, {eval_windows.shape[0]} held-out windows; {train.n_steps} steps planned"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    if args.resume is None:
        save_tokenizer(tokenizer, args.out / "_tokenizer")
    try:
        train_variants(
            train,
            train_windows,
            eval_windows,
            tokenizer,
            args.out,
            max_minutes=args.max_minutes,
            max_steps=args.stop_after_steps,
            resume=args.resume is not None,
        )
    except ValueError as error:  # a resumed run whose corpus or config does not match
        print(f"error: {error}", file=sys.stderr)
        return 2
    for variant in train.variants:
        if args.resume is None:
            save_tokenizer(tokenizer, args.out / variant)
        else:  # the files saved when the run started, byte for byte: a reloaded tokenizer saves extra keys
            for file in (args.out / "_tokenizer").iterdir():
                shutil.copy2(file, args.out / variant / file.name)
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
