"""Training curves from a training log (`training_log.csv` of `python -m gated_interp.train`): how
first-token attention, max |residual| and held-out loss moved as the variants trained."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from gated_interp.plotting._common import variant_style

# The variant each other variant's loss is drawn against, the first of these the log holds: the
# paper's ungated baseline, or the ungated twin of a hybrid (Qwen3.5-layout) pair.
REFERENCE_VARIANTS = ("baseline", "hybrid_ungated")


def _layers_with(log: pd.DataFrame, prefix: str) -> list[int]:
    return sorted(int(c.rsplit("_L", 1)[1]) for c in log.columns if c.startswith(prefix))


def logged_layers(log: pd.DataFrame) -> list[int]:
    """The (0-based) layers a training log has first-token attention for (`first_token_attention_L{layer}`):
    every layer of the paper's models, the full-attention layers of a hybrid."""
    return _layers_with(log, "first_token_attention_L")


def residual_layers(log: pd.DataFrame) -> list[int]:
    """The (0-based) layers a training log has max |residual| for (`max_abs_resid_L{layer}`): every layer."""
    return _layers_with(log, "max_abs_resid_L")


def default_reference_variant(log: pd.DataFrame) -> str | None:
    """The first of `REFERENCE_VARIANTS` that the log holds, else None."""
    present = set(log["variant"])
    return next((variant for variant in REFERENCE_VARIANTS if variant in present), None)


def training_curves(
    log: pd.DataFrame,
    data: str | None = None,
    reference: tuple[float, str] | None = None,
    title: str = "Training curves",
    reference_variant: str | None = None,
) -> Figure:
    """Training curves per variant and layer (0-based): first-token attention (top row, with the
    `reference` level dashed) and max |residual| after the block (bottom row); the right column
    holds each variant's held-out loss minus `reference_variant`'s (the loss curves lie within a
    few hundredths of a nat, so their difference is what can be read). The first seed in the log
    is drawn solid; other seeds (a `seed` column) thin. A layer with max |residual| but no
    first-token attention (a hybrid's linear-attention layer: it has no attention pattern) gets a
    note in the top row instead of curves.

    `log`: one row per variant and evaluation, with columns `step`, `tokens`, `variant`,
    `val_loss`, `first_token_attention_L{layer}` and `max_abs_resid_L{layer}` (and `seed`).
    `data`: the held-out windows evaluated ("32 held-out windows of 128 tokens"), for the title,
    which `title` starts. `reference`: `(level, label)` of first-token attention to compare with,
    e.g. `(analysis.uniform_first_token_attention(seq_len), "uniform attention, 128 tokens")`.
    `reference_variant`: default the first of `REFERENCE_VARIANTS` in the log (`baseline`, else
    `hybrid_ungated`); without one the loss panel stays empty.
    """
    attention_layers = logged_layers(log)
    layers = sorted(set(attention_layers) | set(residual_layers(log)))
    if not attention_layers:
        raise ValueError(
            "the training log has no first_token_attention_L{layer} columns; pass a training_log.csv written by "
            "python -m gated_interp.train"
        )
    if reference_variant is None:
        reference_variant = default_reference_variant(log)
    fig, axes = plt.subplots(
        2, len(layers) + 1, figsize=(3.3 * (len(layers) + 1), 6.4), sharex=True, squeeze=False, layout="constrained"
    )
    # Panels of one row share the y axis of the row's first panel with curves (a hybrid's layer 0
    # has no first-token attention, its top panel only a note).
    first_attention = axes[0, layers.index(attention_layers[0])]
    for row, first in ((0, first_attention), (1, axes[1, 0])):
        for column, layer in enumerate(layers):
            has_curves = row == 1 or layer in attention_layers
            if axes[row, column] is not first and has_curves:
                axes[row, column].sharey(first)
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
        has_reference = reference_variant is not None and reference_variant in set(rows_of_seed["variant"])
        base = (
            rows_of_seed[rows_of_seed["variant"] == reference_variant].set_index("step")["val_loss"]
            if has_reference
            else None
        )
        for index, (variant, rows) in enumerate(rows_of_seed.groupby("variant", sort=False)):
            style = variant_style(str(variant), index)
            label = (f"{variant}" if seed is None else f"{variant}, seed {seed}") if first_seed else f"seed {seed}"
            label = label if first_seed or index == 0 else None
            tokens = rows["tokens"] / 1e6
            for column, layer in enumerate(layers):
                if layer in attention_layers:
                    axes[0, column].plot(tokens, rows[f"first_token_attention_L{layer}"], label=label, **style, **line)
                axes[1, column].plot(tokens, rows[f"max_abs_resid_L{layer}"], **style, **line)
            if base is not None:  # only at steps the reference was evaluated too (a resumed run may add one)
                losses = rows.set_index("step")
                shared = losses.index.intersection(base.index)
                difference = losses.loc[shared, "val_loss"] - base.loc[shared]
                ax_loss.plot(losses.loc[shared, "tokens"] / 1e6, difference.to_numpy(), **style, **line)
    if reference is not None:
        level, reference_label = reference
        for column, layer in enumerate(layers):
            if layer in attention_layers:
                axes[0, column].axhline(level, color="0.4", linestyle="--", linewidth=1, label=reference_label)
    for column, layer in enumerate(layers):
        if layer in attention_layers:
            axes[0, column].set_title(f"First-token attention, layer {layer}")
        else:
            axes[0, column].text(
                0.5, 0.5, f"layer {layer}: linear attention,\nno attention pattern",
                ha="center", va="center", transform=axes[0, column].transAxes,
            )  # fmt: skip
            axes[0, column].axis("off")
        axes[1, column].set_title(f"Max |residual| after block {layer}")
        axes[1, column].set_xlabel("training tokens (millions)")
    first_attention.set_ylabel("mean attention to position 0")
    axes[1, 0].set_ylabel("max |residual stream|")
    first_attention.set_ylim(bottom=0)
    axes[1, 0].set_ylim(bottom=0)
    ax_loss.set(ylabel="nats", xlabel="training tokens (millions)", title=_loss_title(reference_variant))
    ax_loss.tick_params(labelbottom=True)
    ax_loss.axhline(0, color="0.4", linewidth=0.8)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    handles, labels = first_attention.get_legend_handles_labels()
    ax_legend.axis("off")
    ax_legend.legend(handles, labels, loc="center", frameon=False)
    fig.suptitle(f"{title}, measured on {data or 'the held-out windows'} at every evaluation")
    return fig


def _loss_title(reference_variant: str | None) -> str:
    if reference_variant is None:
        return "Held-out loss (no reference variant in the log)"
    if reference_variant == "baseline":
        return "Held-out loss minus the baseline's"
    return f"Held-out loss minus\n{reference_variant}'s"  # on two lines: a long name overflows the panel
