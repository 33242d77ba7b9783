"""Train the variants of one layout side by side, differing only in the attention-output gate.

All variants share the tokenizer, the initial seed of every weight they have in common, the data
and its order, and the hyperparameters: each step feeds the *same* batch to every variant. Every
`eval_interval` steps each variant is evaluated on fixed held-out windows (loss, first-token
attention per layer, max |residual| per layer), so that the emergence of the attention sink is
recorded as it happens. Checkpoints are written with `save_hf`: in the released format for the
paper's layout, as Qwen3.5 text folders (`qwen3_5_text`) for the hybrid one.
"""

from __future__ import annotations

import csv
import hashlib
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

# The layouts the trainer builds, each with its variants and their gates. "qwen3" is the paper's
# (every layer full attention, the gate's rows per key-value group); "qwen3_5" is Qwen3.5's hybrid
# (`qwen3_5_architecture`), gated as it ships or not at all.
HYBRID_VARIANT_GATES: dict[str, str] = {"hybrid_gated": "elementwise", "hybrid_ungated": "none"}
LAYOUT_VARIANTS: dict[str, dict[str, str]] = {"qwen3": VARIANT_GATES, "qwen3_5": HYBRID_VARIANT_GATES}
TRAINABLE_VARIANT_GATES: dict[str, str] = {**VARIANT_GATES, **HYBRID_VARIANT_GATES}
# Qwen3.5: one full-attention layer after every three Gated DeltaNet layers.
FULL_ATTENTION_INTERVAL = 4


def default_architecture(**overrides) -> GatedQwen3Config:
    """The tiny models' architecture (`GatedQwen3Config.tiny`, on the CPU): its per-run fields
    (`d_vocab` from the tokenizer, `n_ctx` from `seq_len`, `gate` from the variant) are filled in
    when the models are built."""
    return GatedQwen3Config.tiny(**{"device": "cpu", **overrides})


def qwen3_5_architecture(**overrides) -> GatedQwen3Config:
    """The tiny models' sizes in Qwen3.5's layout: layers linear, linear, linear, full, ...; every
    norm multiplies by 1 + w; rotary on the first quarter of each head; the gate (when a variant
    has one) elementwise per query head, its rows interleaved per head in q_proj; saved as a
    `qwen3_5_text` folder. The Gated DeltaNet's widths follow Qwen3.5's proportions (query/key
    heads half of d_model, value heads all of it): d_model / (2 d_head) key heads and twice as many
    value heads of width d_head."""
    base = default_architecture(**overrides)
    if not base.use_qk_norm:
        raise ValueError("the qwen3_5 layout always has per-head query and key norms (as Qwen3.5): drop --no-qk-norm")
    if base.n_layers < FULL_ATTENTION_INTERVAL:
        raise ValueError(
            f"the qwen3_5 layout puts full attention on every {FULL_ATTENTION_INTERVAL}th layer: it needs "
            f"n_layers >= {FULL_ATTENTION_INTERVAL}, got {base.n_layers}"
        )
    key_heads = max(1, base.d_model // (2 * base.d_head))
    return replace(
        base,
        layer_types=tuple(
            "full_attention" if (i + 1) % FULL_ATTENTION_INTERVAL == 0 else "linear_attention"
            for i in range(base.n_layers)
        ),
        zero_centred_norms=True,
        partial_rotary_factor=0.25,
        gate_layout="per_head",
        original_architecture="Qwen3_5ForCausalLM",
        linear_n_key_heads=key_heads,
        linear_n_value_heads=2 * key_heads,
        linear_d_key=base.d_head,
        linear_d_value=base.d_head,
    )


ARCHITECTURES = {"qwen3": default_architecture, "qwen3_5": qwen3_5_architecture}


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
            # JSON gives lists where the config holds tuples (layer_types, moe_layers).
            model = {key: tuple(v) if isinstance(v, list) else v for key, v in data.pop("model").items()}
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
    hybrid = train.model.layer_types is not None
    if variant not in (HYBRID_VARIANT_GATES if hybrid else VARIANT_GATES):
        layout = "qwen3_5" if hybrid else "qwen3"
        raise ValueError(f"variant {variant!r} is not one of the {layout} layout's {list(LAYOUT_VARIANTS[layout])}")
    return replace(
        train.model,
        d_vocab=vocab_size,
        n_ctx=train.seq_len,
        gate=TRAINABLE_VARIANT_GATES[variant],
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
    """Held-out loss, and per layer the mean attention that queries >= 1 give to position 0 (on
    the full-attention layers: a hybrid's Gated DeltaNet layers have no attention pattern) and
    the max |residual| after the block (every layer), on fixed windows (`analysis.streaming.measure`)."""
    m = measure(model, windows, batch_size=batch_size, progress=False)
    row = {"val_loss": m.loss()}
    by_layer = m.first_token_attention("layer").tolist()
    row.update({f"first_token_attention_L{layer}": by_layer[layer] for layer in m.attention_layers})
    row.update({f"max_abs_resid_L{layer}": value for layer, value in enumerate(m.max_abs_resid_by_layer().tolist())})
    return row


STATE_FILE = "_train_state.pt"  # what `--resume` continues from; written with every checkpoint
CONFIG_FILE = "train_config.json"  # the run's TrainConfig, written when it starts


def train_variants(
    train: TrainConfig,
    train_windows: Int[Tensor, "window pos"],
    eval_windows: Int[Tensor, "eval_window pos"],
    tokenizer,
    out_dir: Path,
    max_minutes: Optional[float] = None,
    progress: bool = True,
    max_steps: Optional[int] = None,
    resume: bool = False,
) -> dict[str, HookedGatedQwen3]:
    """Train every variant in `train.variants` on the same batches; write checkpoints to
    `out_dir/<variant>`, the learning curves to `out_dir/training_log.csv`.

    With every checkpoint, `out_dir/_train_state.pt` records what a later run needs to continue
    exactly: the fp32 weights and AdamW state of every variant, the step (which fixes the position
    in the data order, `WindowSampler`), the running train loss, torch's RNG state, the log rows and
    the elapsed time. `resume=True` continues from it (same `train`, same windows); the learning-rate
    schedule, the log and the token counts run on as if training had never stopped.
    `max_steps` stops after that many steps in all (a run can then be resumed).
    """
    from gated_interp.train.data import WindowSampler

    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(train.seed)
    models = build_models(train, len(tokenizer), tokenizer)
    optimizers = {v: make_optimizer(m, train) for v, m in models.items()}
    sampler = WindowSampler(train_windows, train.batch_size, train.seed)
    log_path = out_dir / "training_log.csv"
    log_rows: list[dict] = []
    running_loss: dict[str, float] = {}
    save_dtype = getattr(torch, train.save_dtype)
    windows_digest = _digest(train_windows)
    start_step, elapsed_before = 0, 0.0
    if resume:
        state = load_train_state(out_dir)
        if state["train_config"] != train.to_dict():
            raise ValueError(
                f"{out_dir / STATE_FILE} was written with another train config; resume with the run's own "
                f"config (TrainConfig.from_dict(state['train_config'])).\n saved: {state['train_config']}\n "
                f"given: {train.to_dict()}"
            )
        if state["windows_digest"] != windows_digest:
            raise ValueError(
                f"the training windows differ from those {out_dir} was trained on: resume with the same "
                "corpus, tokenizer and --max-corpus-bytes"
            )
        for variant, model in models.items():
            model.load_state_dict(state["models"][variant])
            optimizers[variant].load_state_dict(state["optimizers"][variant])
        start_step, elapsed_before = state["step"], state["elapsed_s"]
        running_loss, log_rows = dict(state["running_loss"]), list(state["log_rows"])
        torch.set_rng_state(state["rng_state"])
    started = time.time() - elapsed_before

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

    def save_all(done: int) -> None:
        for variant, model in models.items():
            save_hf(model, out_dir / variant, dtype=save_dtype)
        state = {
            "train_config": train.to_dict(),
            "step": done,
            "models": {v: m.state_dict() for v, m in models.items()},
            "optimizers": {v: o.state_dict() for v, o in optimizers.items()},
            "running_loss": dict(running_loss),
            "rng_state": torch.get_rng_state(),
            "log_rows": list(log_rows),
            "elapsed_s": time.time() - started,
            "windows_digest": windows_digest,
        }
        torch.save(state, out_dir / (STATE_FILE + ".tmp"))
        (out_dir / (STATE_FILE + ".tmp")).replace(out_dir / STATE_FILE)  # never a half-written state

    if not resume:
        (out_dir / CONFIG_FILE).write_text(json.dumps(train.to_dict(), indent=2) + "\n")
        log_eval(0)
    last = train.n_steps if max_steps is None else min(train.n_steps, max_steps)
    bar = tqdm(range(start_step, last), desc="training", initial=start_step, total=last, disable=not progress)
    done = start_step
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
        evaluated = done % train.eval_interval == 0 or done == train.n_steps
        if evaluated:
            log_eval(done)
        if done % train.save_interval == 0:
            save_all(done)
        if max_minutes is not None and time.time() - started - elapsed_before > 60 * max_minutes:
            tqdm.write(f"stopping after {done} steps: the {max_minutes}-minute budget is spent")
            if not evaluated:
                log_eval(done)
            break
    else:
        if done < train.n_steps and done % train.eval_interval != 0 and done > start_step:
            log_eval(done)  # stopped by max_steps between evaluations
    save_all(done)
    summary = {
        "train_config": train.to_dict(),
        "steps_done": done,
        "tokens_seen": done * train.tokens_per_step,
        "wall_time_s": round(time.time() - started, 1),
        "torch_threads": torch.get_num_threads(),
    }
    if done < train.n_steps:
        summary["stopped_early"] = f"{done} of {train.n_steps} steps; continue with --resume"
    (out_dir / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return models


def load_train_state(run_dir: Path) -> dict[str, Any]:
    """The state `train_variants` saved in `run_dir` (see there); a clear error if there is none."""
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: --resume needs the folder of an earlier run of python -m gated_interp.train "
            "(runs written before resuming existed cannot be continued)"
        )
    return torch.load(path, weights_only=True)


def _digest(windows: Tensor) -> str:
    return hashlib.sha256(windows.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
