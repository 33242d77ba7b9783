"""Train the three variants side by side, differing only in the attention-output gate.

All variants share the tokenizer, the initial seed of every weight they have in common, the data
and its order, and the hyperparameters: each step feeds the *same* batch to every variant. Every
`eval_interval` steps each variant is evaluated on fixed held-out windows (loss, first-token
attention per layer, max |residual| per layer), so that the emergence of the attention sink is
recorded as it happens. Checkpoints are written with `save_hf` in the released format.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm

from gated_interp.analysis.streaming import measure
from gated_interp.config import VARIANT_GATES, GatedQwen3Config
from gated_interp.loading import save_hf
from gated_interp.model import HookedGatedQwen3


@dataclass
class TrainConfig:
    variants: tuple[str, ...] = tuple(VARIANT_GATES)
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_key_value_heads: int = 2
    d_head: int = 32
    d_mlp: int = 384
    seq_len: int = 256
    batch_size: int = 32
    total_tokens: int = 12_000_000
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    seed: int = 0
    eval_interval: int = 100
    eval_windows: int = 64
    save_interval: int = 500
    rope_theta: float = 10_000.0
    save_dtype: str = "bfloat16"
    extra: dict = field(default_factory=dict)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def n_steps(self) -> int:
        return max(1, self.total_tokens // self.tokens_per_step)


def model_config(train: TrainConfig, variant: str, vocab_size: int) -> GatedQwen3Config:
    return GatedQwen3Config(
        d_model=train.d_model,
        n_layers=train.n_layers,
        n_heads=train.n_heads,
        n_key_value_heads=train.n_key_value_heads,
        d_head=train.d_head,
        d_mlp=train.d_mlp,
        d_vocab=vocab_size,
        n_ctx=train.seq_len,
        gate=VARIANT_GATES[variant],
        rope_theta=train.rope_theta,
        model_name=f"tiny_{variant}",
        device="cpu",
    )


def build_models(train: TrainConfig, vocab_size: int, tokenizer) -> dict[str, HookedGatedQwen3]:
    """Same seed for every variant: the weights they share start identical, and the gate weights
    are drawn after them, so that the variants differ only by the gate."""
    models = {}
    for variant in train.variants:
        model = HookedGatedQwen3(model_config(train, variant, vocab_size), tokenizer=tokenizer)
        model.init_weights(seed=train.seed)
        models[variant] = model
    return models


def lr_at(step: int, train: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to `min_lr_ratio * lr`."""
    if step < train.warmup_steps:
        return train.lr * (step + 1) / train.warmup_steps
    progress = (step - train.warmup_steps) / max(1, train.n_steps - train.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return train.lr * (train.min_lr_ratio + (1 - train.min_lr_ratio) * cosine)


def make_optimizer(model: HookedGatedQwen3, train: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on norm weights and biases (1-D parameters)."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=train.lr,
        betas=train.betas,
    )


def evaluate(model: HookedGatedQwen3, windows: Int[Tensor, "window pos"], batch_size: int = 16) -> dict[str, float]:
    """Held-out loss, and per layer the mean attention that queries >= 1 give to position 0 and
    the max |residual| after the block, on fixed windows (`analysis.streaming.measure`)."""
    m = measure(model, windows, batch_size=batch_size, progress=False)
    row = {"val_loss": m.loss()}
    by_layer = m.first_token_attention("layer").tolist()
    row.update({f"first_token_attention_L{layer}": value for layer, value in enumerate(by_layer)})
    row.update({f"max_abs_resid_L{layer}": value for layer, value in enumerate(m.max_abs_resid_by_layer().tolist())})
    return row


def train_variants(
    train: TrainConfig,
    train_windows: Int[Tensor, "window pos"],
    eval_windows: Int[Tensor, "eval_window pos"],
    tokenizer,
    out_dir: Path,
    max_minutes: Optional[float] = None,
    progress: bool = True,
) -> dict[str, HookedGatedQwen3]:
    """Train every variant in `train.variants` on the same batches; write checkpoints to
    `out_dir/<variant>`, the learning curves to `out_dir/training_log.csv`."""
    from gated_interp.train.data import WindowSampler

    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(train.seed)
    models = build_models(train, len(tokenizer), tokenizer)
    optimizers = {v: make_optimizer(m, train) for v, m in models.items()}
    sampler = WindowSampler(train_windows, train.batch_size, train.seed)
    log_path = out_dir / "training_log.csv"
    log_rows: list[dict] = []
    started = time.time()
    save_dtype = getattr(torch, train.save_dtype)

    def log_eval(step: int) -> None:
        for variant, model in models.items():
            model.eval()
            row = {
                "step": step,
                "tokens": step * train.tokens_per_step,
                "variant": variant,
                "elapsed_s": round(time.time() - started, 1),
                **evaluate(model, eval_windows),
            }
            row["train_loss"] = running_loss.get(variant, float("nan"))
            log_rows.append(row)
            model.train()
        _write_csv(log_path, log_rows)

    def save_all() -> None:
        for variant, model in models.items():
            save_hf(model, out_dir / variant, dtype=save_dtype)

    running_loss: dict[str, float] = {}
    log_eval(0)
    bar = tqdm(range(train.n_steps), desc="training", disable=not progress)
    step = 0
    for step in bar:
        batch = sampler.batch(step)
        lr = lr_at(step, train)
        for variant, model in models.items():
            optimizer = optimizers[variant]
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = model(batch, return_type="loss")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
            optimizer.step()
            # Exponential moving average: a readable train-loss curve without extra forwards.
            value = loss.item()
            previous = running_loss.get(variant, value)
            running_loss[variant] = 0.98 * previous + 0.02 * value
        bar.set_postfix({v[:9]: f"{running_loss[v]:.3f}" for v in models})
        done = step + 1
        if done % train.eval_interval == 0 or done == train.n_steps:
            log_eval(done)
        if done % train.save_interval == 0:
            save_all()
        if max_minutes is not None and time.time() - started > 60 * max_minutes:
            tqdm.write(f"stopping after {done} steps: the {max_minutes}-minute budget is spent")
            if done % train.eval_interval != 0:
                log_eval(done)
            break
    save_all()
    summary = {
        "train_config": asdict(train),
        "steps_done": step + 1,
        "tokens_seen": (step + 1) * train.tokens_per_step,
        "wall_time_s": round(time.time() - started, 1),
        "torch_threads": torch.get_num_threads(),
    }
    (out_dir / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return models


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
