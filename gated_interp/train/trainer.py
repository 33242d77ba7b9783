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
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Optional

import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm

from gated_interp.analysis.streaming import measure
from gated_interp.config import VARIANT_GATES, GatedQwen3Config
from gated_interp.loading import save_hf
from gated_interp.model import HookedGatedQwen3


def default_architecture(**overrides) -> GatedQwen3Config:
    """The tiny models' architecture: a `GatedQwen3Config` whose per-run fields (`d_vocab` from the
    tokenizer, `n_ctx` from `seq_len`, `gate` from the variant) are filled in when the models are built."""
    fields_ = dict(
        d_model=128,
        n_layers=4,
        n_heads=4,
        n_key_value_heads=2,
        d_head=32,
        d_mlp=384,
        d_vocab=4096,
        n_ctx=256,
        rope_theta=10_000.0,  # not Qwen3's 1e6: contexts here are a few hundred tokens
        device="cpu",
    )
    fields_.update(overrides)
    return GatedQwen3Config(**fields_)


# The architecture keys of the old flat `train_config` layout (training summaries and the bundled
# `metrics.json` written before the config embedded the model's).
_FLAT_MODEL_KEYS = ("d_model", "n_layers", "n_heads", "n_key_value_heads", "d_head", "d_mlp", "rope_theta")


@dataclass
class TrainConfig:
    """Everything a training run depends on. The architecture is the model's own config (`model`),
    shared by every variant; each variant sets only its gate (`VARIANT_GATES`)."""

    variants: tuple[str, ...] = tuple(VARIANT_GATES)
    model: GatedQwen3Config = field(default_factory=default_architecture)
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
    save_dtype: str = "bfloat16"
    extra: dict = field(default_factory=dict)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def n_steps(self) -> int:
        return max(1, self.total_tokens // self.tokens_per_step)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the model config is written as its fields that differ from
        `GatedQwen3Config`'s defaults (plus the required ones)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "model"}
        out["variants"], out["betas"] = list(self.variants), list(self.betas)
        model: dict[str, Any] = {}
        for f in fields(GatedQwen3Config):
            value = getattr(self.model, f.name)
            if f.default is MISSING and f.default_factory is MISSING or value != _default_of(f):
                model[f.name] = str(value).removeprefix("torch.") if isinstance(value, torch.dtype) else value
        return {"variants": out.pop("variants"), "model": model, **out}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """Inverse of `to_dict`; also reads the old flat layout, where the architecture fields
        (d_model, n_layers, ..., rope_theta) sat next to the training ones."""
        data = dict(data)
        if "model" in data:
            model = dict(data.pop("model"))
            if isinstance(model.get("dtype"), str):
                model["dtype"] = getattr(torch, model["dtype"])
            architecture = GatedQwen3Config(**model)
        else:
            missing = [key for key in _FLAT_MODEL_KEYS if key not in data]
            if missing:
                raise ValueError(
                    f"train config has neither a 'model' entry nor the flat architecture keys {missing}; "
                    "it was not written by gated_interp.train"
                )
            architecture = default_architecture(**{key: data.pop(key) for key in _FLAT_MODEL_KEYS})
            if "seq_len" in data:
                architecture = replace(architecture, n_ctx=data["seq_len"])
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown train config keys {sorted(unknown)}; known: {[f.name for f in fields(cls)]}")
        if "variants" in data:
            data["variants"] = tuple(data["variants"])
        if "betas" in data:
            data["betas"] = tuple(data["betas"])
        return cls(model=architecture, **data)


def _default_of(f) -> Any:
    return f.default if f.default is not MISSING else f.default_factory()


def model_config(train: TrainConfig, variant: str, vocab_size: int) -> GatedQwen3Config:
    """`train.model` with this run's vocabulary, context and the variant's gate."""
    return replace(
        train.model,
        d_vocab=vocab_size,
        n_ctx=train.seq_len,
        gate=VARIANT_GATES[variant],
        model_name=f"tiny_{variant}",
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
        "train_config": train.to_dict(),
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
