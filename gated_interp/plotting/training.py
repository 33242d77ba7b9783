"""Training curves from a training log (`training_log.csv` of `python -m gated_interp.train`): how
first-token attention, max |residual| and held-out loss moved as the variants trained."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from gated_interp.plotting._common import variant_style


def logged_layers(log: pd.DataFrame) -> list[int]:
    """The (0-based) layers a training log has columns for (`first_token_attention_L{layer}`)."""
    return sorted(int(c.rsplit("_L", 1)[1]) for c in log.columns if c.startswith("first_token_attention_L"))


def training_curves(
    log: pd.DataFrame,
    data: str | None = None,
    reference: tuple[float, str] | None = None,
    title: str = "Training curves",
) -> Figure:
    """Training curves per variant and layer (0-based): first-token attention (top row, with the
    `reference` level dashed) and max |residual| after the block (bottom row); the right column
    holds each gated variant's held-out loss minus the baseline's (the loss curves lie within a
    few hundredths of a nat, so their difference is what can be read). The first seed in the log
    is drawn solid; other seeds (a `seed` column) thin.

    `log`: one row per variant and evaluation, with columns `step`, `tokens`, `variant`,
    `val_loss`, `first_token_attention_L{layer}` and `max_abs_resid_L{layer}` (and `seed`).
    `data`: the held-out windows evaluated ("32 held-out windows of 128 tokens"), for the title,
    which `title` starts. `reference`: `(level, label)` of first-token attention to compare with,
    e.g. `(analysis.uniform_first_token_attention(seq_len), "uniform attention, 128 tokens")`.
    """
    layers = logged_layers(log)
    if not layers:
        raise ValueError(
            "the training log has no first_token_attention_L{layer} columns; pass a training_log.csv written by "
            "python -m gated_interp.train"
        )
    fig, axes = plt.subplots(
        2, len(layers) + 1, figsize=(3.3 * (len(layers) + 1), 6.4), sharex=True, squeeze=False, layout="constrained"
    )
    for row in (0, 1):
        for ax in axes[row, 1 : len(layers)]:
            ax.sharey(axes[row, 0])
    ax_loss, ax_legend = axes[0, -1], axes[1, -1]
    seeds = list(dict.fromkeys(log["seed"])) if "seed" in log.columns else [None]
    for seed_index, seed in enumerate(seeds):
        rows_of_seed = log if seed is None else log[log["seed"] == seed]
        first_seed = seed_index == 0
        line = {
            "marker": "." if first_seed else None,
            "linewidth": 1.6 if first_seed else 0.9,
            "alpha": 1.0 if first_seed else 0.55,
        }
        has_baseline = "baseline" in set(rows_of_seed["variant"])
        base = (
            rows_of_seed[rows_of_seed["variant"] == "baseline"].set_index("step")["val_loss"] if has_baseline else None
        )
        for index, (variant, rows) in enumerate(rows_of_seed.groupby("variant", sort=False)):
            style = variant_style(str(variant), index)
            label = (f"{variant}" if seed is None else f"{variant}, seed {seed}") if first_seed else f"seed {seed}"
            label = label if first_seed or index == 0 else None
            tokens = rows["tokens"] / 1e6
            for column, layer in enumerate(layers):
                axes[0, column].plot(tokens, rows[f"first_token_attention_L{layer}"], label=label, **style, **line)
                axes[1, column].plot(tokens, rows[f"max_abs_resid_L{layer}"], **style, **line)
            if base is not None:  # only at steps the baseline was evaluated too (a resumed run may add one)
                losses = rows.set_index("step")
                shared = losses.index.intersection(base.index)
                difference = losses.loc[shared, "val_loss"] - base.loc[shared]
                ax_loss.plot(losses.loc[shared, "tokens"] / 1e6, difference.to_numpy(), **style, **line)
    if reference is not None:
        level, reference_label = reference
        for ax in axes[0, : len(layers)]:
            ax.axhline(level, color="0.4", linestyle="--", linewidth=1, label=reference_label)
    for column, layer in enumerate(layers):
        axes[0, column].set_title(f"First-token attention, layer {layer}")
        axes[1, column].set_title(f"Max |residual| after block {layer}")
        axes[1, column].set_xlabel("training tokens (millions)")
    axes[0, 0].set_ylabel("mean attention to position 0")
    axes[1, 0].set_ylabel("max |residual stream|")
    axes[0, 0].set_ylim(bottom=0)
    axes[1, 0].set_ylim(bottom=0)
    ax_loss.set(ylabel="nats", xlabel="training tokens (millions)", title="Held-out loss minus the baseline's")
    ax_loss.tick_params(labelbottom=True)
    ax_loss.axhline(0, color="0.4", linewidth=0.8)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    ax_legend.axis("off")
    ax_legend.legend(handles, labels, loc="center", frameon=False)
    fig.suptitle(f"{title}, measured on {data or 'the held-out windows'} at every evaluation")
    return fig
