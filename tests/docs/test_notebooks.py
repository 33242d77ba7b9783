"""Every notebook runs top to bottom on the bundled tiny models, and prints what its text says.

Executed with papermill (kernel `python3`, working directory `notebooks/`) into a temporary copy,
so the committed notebooks and their outputs are left alone. The copy gets one more cell at the
end, which prints the values the notebook's prose states (as JSON, full precision); each
`check_*` below compares them with the prose, within the precision the prose writes them in
(`stated("0.045")` is 0.045 +- 0.0005), so a change that moves a number the text quotes fails
here, naming the sentence.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import nbformat
import papermill  # a dev dependency: missing, it fails the run rather than skipping the notebooks
import pytest
from helpers import require_bundled

NOTEBOOKS_DIR = Path(__file__).resolve().parents[2] / "notebooks"
NOTEBOOKS = ("01_quickstart", "02_attention_sinks", "03_gate_sparsity", "04_patching", "05_gated_attention_as_it_ships")
GATED = ("gate_headwise", "gate_elementwise")
RECORD_MARKER = "RECORDED NOTEBOOK VALUES: "


def stated(text: str, about: float | None = None):
    """A number the prose writes as `text`: equal within half its last digit, or within `about`
    where the prose says "about"."""
    decimals = len(text.split(".")[1]) if "." in text else 0
    return pytest.approx(float(text), abs=about if about is not None else 0.5 * 10**-decimals + 1e-12)


class Claims:
    """Collects every claim that does not hold, so that one run reports all of them."""

    def __init__(self, notebook: str) -> None:
        self.notebook, self.failed = notebook, []

    def check(self, holds: bool, claim: str, measured: object) -> None:
        if not holds:
            self.failed.append(f"{claim!r}: measured {measured}")

    def report(self) -> None:
        assert not self.failed, f"{self.notebook}: the text says what the outputs do not:\n" + "\n".join(self.failed)


# ---- 01 -----------------------------------------------------------------------------------------
RECORD_01 = {
    "n_layers": "cfg.n_layers",
    "demo_layers": "list(layers)",
    "gate_hooks": "{n: sum('gate' in h for h in m.hook_dict) for n, m in models.items()}",
    "first_token": "{n: v.tolist() for n, v in first_token.items()}",
}


def check_01(values: dict, claims: Claims) -> None:
    claims.check(values["n_layers"] == 4, "the small models bundled with the package (their 4 layers, 0-3)", values)
    claims.check(values["demo_layers"] == [0, 1, 2, 3], "their 4 layers, 0-3 (demo layers)", values["demo_layers"])
    hooks = values["gate_hooks"]
    claims.check(
        hooks == {"baseline": 0, "gate_headwise": 12, "gate_elementwise": 12},
        "The gate is three hooks per layer (`z_pre_gate`, `gate_logits`, `gate`)",
        hooks,
    )
    first = values["first_token"]
    claims.check(
        all(first["baseline"][layer] > first[g][layer] for layer in (1, 2, 3) for g in GATED),
        "the baseline gives the first token more attention than both gated models in layers 1-3",
        first,
    )
    claims.check(
        first["gate_headwise"][0] < first["baseline"][0] < first["gate_elementwise"][0],
        "in layer 0 it falls between them, above headwise and below elementwise",
        first,
    )
    claims.check(
        [first[v][2] for v in ("gate_headwise", "gate_elementwise", "baseline")]
        == [stated("0.39"), stated("0.35"), stated("0.66")],
        "layer 2: 0.39 headwise and 0.35 elementwise against the baseline's 0.66",
        first,
    )


# ---- 02 -----------------------------------------------------------------------------------------
RECORD_02 = {
    "n_sequences": "int(tokens.shape[0])",
    "loss_gap": "loss_gap",
    "lengths": "list(lengths)",
    "long": "{f'{t} {v}': {c: float(r[c]) for c in ('first_token_attention', 'first_token_attention_lo', "
    "'first_token_attention_hi', 'loss')} for (t, v), r in long_table.iterrows()}",
    "per_head": "{n: {'mean': float(v.mean()), 'max': float(v.max())} for n, v in per_head.items()}",
    "quiet": "{n: {str(k): int(c) for k, c in counts.loc[n].items()} for n in counts.index}",
    "raw": "raw",
    "ratio": "ratio",
    "ratio_layer": "{n: int(f.loc[f.ratio.idxmax(), 'layer']) for n, f in massive.items()}",
    "sink_delta": "{c: delta[c].to_dict() for c in delta.columns}",
    "sink_low": "{c: low[c].to_dict() for c in low.columns}",
    "sink_high": "{c: high[c].to_dict() for c in high.columns}",
    "opened": "{n: {s: opened.loc[(n, s)][['loss', 'first_token_attention', 'max_abs_resid']].astype(float).to_dict()"
    " for s in ('trained gates', 'all gates = 1')} for n in gated}",
}


def check_02(values: dict, claims: Claims) -> None:
    claims.check(values["n_sequences"] == 16, "on these 16 windows", values["n_sequences"])
    # Section 1: the paired loss differences.
    for name, about in (("gate_headwise", "0.04"), ("gate_elementwise", "0.08")):
        mean, _, high = values["loss_gap"][name]
        claims.check(-mean == stated(about), f"{name} lower by about {about} nats per sequence", mean)
        claims.check(high < 0, f"{name}: the paired 95% interval excludes 0", values["loss_gap"][name])
    # Section 1b: long context.
    claims.check(values["lengths"] == [128, 512, 1024], "128 tokens, then 4x and 8x it (512 and 1,024)", values)
    long = values["long"]
    for name in ("baseline", *GATED):
        fall = long[f"128 {name}"]["first_token_attention"] / long[f"1024 {name}"]["first_token_attention"]
        claims.check(fall == stated("5", about=0.5), f"{name}: falls by about 5x from 128 to 1,024 tokens", fall)
    for length in values["lengths"]:
        base = long[f"{length} baseline"]
        for name in GATED:
            claims.check(
                base["first_token_attention_lo"] > long[f"{length} {name}"]["first_token_attention_hi"],
                f"the baseline stays above {name} at {length} tokens with non-overlapping intervals",
                (base, long[f"{length} {name}"]),
            )
        claims.check(
            long[f"{length} gate_elementwise"]["loss"] < base["loss"],
            f"the elementwise model keeps a lower loss than the baseline at {length} tokens",
            (long[f"{length} gate_elementwise"]["loss"], base["loss"]),
        )
    for length in (128, 1024):
        lead = (
            long[f"{length} baseline"]["first_token_attention"]
            / long[f"{length} gate_headwise"]["first_token_attention"]
        )
        claims.check(lead == stated("2.1"), f"baseline / headwise about 2.1x at {length} tokens", lead)
    # At 128 tokens the text says "0.006 above", the printed losses differ by 0.0065 (0.00654).
    for length, gap in ((128, "0.0065"), (512, "-0.002"), (1024, "-0.011")):
        measured = long[f"{length} gate_headwise"]["loss"] - long[f"{length} baseline"]["loss"]
        claims.check(measured == stated(gap), f"headwise loss minus baseline's {gap} at {length} tokens", measured)
    # Section 2: heads.
    base_heads = values["per_head"]["baseline"]
    claims.check(base_heads["mean"] == stated("0.10"), "first-token attention is 0.10 on average", base_heads)
    claims.check(base_heads["max"] == stated("0.23"), "at most 0.23 in any head", base_heads)
    quiet = values["quiet"]
    claims.check(quiet["baseline"].get("active") == 16, "the baseline has no quiet heads at all", quiet)
    for name in GATED:
        claims.check(
            quiet[name].get("sink", 0) == 0 and quiet[name].get("gate", 0) >= 14,
            f"{name}: nearly every head is quiet, all of them through the gate, none through a sink",
            quiet[name],
        )
    # Massive activations.
    for name, text in (("baseline", "31.7"), ("gate_elementwise", "7.9"), ("gate_headwise", "5.3")):
        claims.check(values["raw"][name] == stated(text), f"the raw maximum ({text}) of {name}", values["raw"][name])
    ratio = values["ratio"]
    claims.check(ratio["gate_elementwise"] == stated("65", about=1), "elementwise about 65x its median", ratio)
    claims.check(values["ratio_layer"]["gate_elementwise"] == 0, "elementwise: (layer 0)", values["ratio_layer"])
    claims.check(ratio["baseline"] == stated("86"), "the baseline's 86x", ratio)
    claims.check(ratio["gate_headwise"] == stated("29", about=1), "headwise about 29x", ratio)
    claims.check(
        ratio["gate_elementwise"] / ratio["baseline"] == stated("0.75", about=0.05),
        "three quarters of the baseline's",
        ratio["gate_elementwise"] / ratio["baseline"],
    )
    # Recap: removing the sink, opening the gates.
    everywhere = {name: column["all layers"] for name, column in values["sink_delta"].items()}
    for name, text in (("baseline", "0.045"), ("gate_headwise", "0.030"), ("gate_elementwise", "0.029")):
        claims.check(everywhere[name] == stated(text), f"removing the sink everywhere costs {name} +{text}", everywhere)
    claims.check(
        all(values["sink_low"]["baseline"]["all layers"] < values["sink_high"][name]["all layers"] for name in GATED),
        "the 95% intervals over the 16 windows overlap",
        (values["sink_low"], values["sink_high"]),
    )
    one_layer = max(v for column in values["sink_delta"].values() for k, v in column.items() if k != "all layers")
    claims.check(
        one_layer < 0.0115, "removing it from one layer at a time costs every variant at most +0.011", one_layer
    )
    for name in GATED:
        before, after = values["opened"][name]["trained gates"], values["opened"][name]["all gates = 1"]
        cost = after["loss"] - before["loss"]
        claims.check(1.95 <= cost <= 2.55, f"opening the gates costs {name} 2-2.5 nats", cost)
        for quantity in ("first_token_attention", "max_abs_resid"):
            claims.check(
                after[quantity] <= 1.05 * before[quantity],
                f"{name}: opening brings back no {quantity} (stays or falls)",
                (before[quantity], after[quantity]),
            )


# ---- 03 -----------------------------------------------------------------------------------------
RECORD_03 = {
    "n_evaluation": "int(eval_tokens.shape[0])",
    "mean_gate": "{n: float(pooled[n].mean()) for n in gated}",
    "cost": "{n: f['delta_loss'].to_dict() for n, f in effects.items()}",
    "cost_lo": "{n: f['delta_loss_lo'].to_dict() for n, f in effects.items()}",
    "cost_hi": "{n: f['delta_loss_hi'].to_dict() for n, f in effects.items()}",
    "token0_tighter": "{n: [int((f.gate_pos0 < f.gate_other).sum()), len(f)] for n, f in stats.items()}",
    "logit_pos0_vs_later": "{n: [float(means.loc[n, 'logit_pos0']), float(means.loc[n, 'logit_later'])] "
    "for n in gated}",
    "layer0_reads": "{k: float(v) for k, v in first[[label.startswith('L0') for label in "
    "first.index.get_level_values('label')]][['from_head', 'from_mlp']].abs().max().items()}",
    "largest_mlp": "{f'{n} L{l}H{h}': t[t.kind == 'mlp'].groupby('component').contribution.sum().abs().idxmax() "
    "for (n, l, h), t in first_tables.items() if l >= 1}",
}


def check_03(values: dict, claims: Claims) -> None:
    claims.check(values["n_evaluation"] == 8, "8 evaluation windows", values["n_evaluation"])
    for name in GATED:
        below, heads = values["token0_tighter"][name]
        claims.check(below == heads, f"{name}: every head gates the first token more tightly", (below, heads))
        pos0, later = values["logit_pos0_vs_later"][name]
        claims.check(pos0 < later, f"{name}: the gate is more closed at the first position", (pos0, later))
        claims.check(values["mean_gate"][name] == stated("0.3", about=0.05), "the mean gate is about 0.3", values)
    claims.check(
        values["layer0_reads"] == {"from_head": 0.0, "from_mlp": 0.0},
        "Layer-0 gates read only the embedding",
        values["layer0_reads"],
    )
    largest = list(values["largest_mlp"].values())
    claims.check(
        largest.count("L0 mlp_out") > len(largest) / 2,
        "what closes it there is mostly the MLP outputs (the layer-0 MLP most of all)",
        largest,
    )
    cost, lo, hi = values["cost"], values["cost_lo"], values["cost_hi"]
    for name, opened, closed in (("gate_headwise", "2.71", "1.40"), ("gate_elementwise", "2.09", "1.42")):
        claims.check(
            cost[name]["fix 1.0 (open)"] == stated(opened), f"{name}: opening every gate +{opened}", cost[name]
        )
        claims.check(
            cost[name]["fix 0.0 (closed)"] == stated(closed), f"{name}: closing every gate +{closed}", cost[name]
        )
        claims.check(
            lo[name]["fix 1.0 (open)"] > hi[name]["fix 0.0 (closed)"],
            f"{name}: the intervals separate the two ends",
            (lo[name], hi[name]),
        )
    separation = {name: lo[name]["fix 1.0 (open)"] - hi[name]["fix 0.0 (closed)"] for name in GATED}
    claims.check(
        separation["gate_elementwise"] < separation["gate_headwise"],
        "they separate the two ends for both variants (for gate_elementwise barely)",
        separation,
    )
    for name, text in (("gate_headwise", "0.21"), ("gate_elementwise", "0.28")):
        claims.check(cost[name]["mean per head"] == stated(text), f"query dependence +{text} nats ({name})", cost)
        claims.check(lo[name]["mean per head"] > 0, f"{name}: query dependence is beyond noise", lo[name])
    for name, text in (("gate_headwise", "0.01"), ("gate_elementwise", "0.06")):
        pattern = cost[name]["fix at mean score"] - cost[name]["mean per head"]
        claims.check(pattern == stated(text), f"the per-head pattern +{text} nats ({name})", pattern)
        widths = [hi[name][row] - lo[name][row] for row in ("fix at mean score", "mean per head")]
        claims.check(pattern < min(widths), f"{name}: smaller than the width of their intervals", (pattern, widths))


# ---- 04 -----------------------------------------------------------------------------------------
RECORD_04 = {
    "task": "{n: {k: float(v) for k, v in r.items()} for n, r in task.iterrows()}",
    "screened_in": "screened_in",
    "agreement": "agreement",
    "induction": "induction",
    "resid": "{'subject': resid[:, subject_pos].tolist(), 'last': resid[:, -1].tolist()}",
    "ablation_verdict": "ablation_verdict",
    "ablation": "{n: r.to_dict() for n, r in ablation_rows.items()}",
    "strongest_reads_subject": "strongest_reads_subject",
    "strongest_gated_head": "[float(parts[p][strongest_gated_head]) for p in ('z_pre_gate', 'gate')]",
    "tl_gate_difference": "tl_gate_difference",
}


def check_04(values: dict, claims: Claims) -> None:
    for name, row in values["task"].items():
        claims.check(
            row["metric clean"] > 0 > row["metric corrupted"],
            f"{name}: she - he positive on the clean prompts and negative on the corrupted ones",
            row,
        )
    claims.check(
        all(n == 3 for n in values["screened_in"].values()),
        "AtP* puts the three heads that exhaustive patching ranks highest among its top six in every variant",
        values["screened_in"],
    )
    claims.check(
        all(r > 0.9 for r in values["agreement"].values()),
        "the linear approximation is good for head outputs (and z_pre_gate, gate_logits, gate)",
        values["agreement"],
    )
    resid = values["resid"]
    claims.check(
        resid["subject"][0] > 0.9 and abs(resid["last"][0]) < 0.05, "at layer 0 only the subject matters", resid
    )
    claims.check(
        resid["last"][2] == stated("0.36") and resid["subject"][3] == stated("0.50"),
        "about half of the answer sits at the last position (0.36 at layer 2) and the subject position still "
        "carries about half through layer 3 (0.50)",
        resid,
    )
    claims.check(
        all(subject > last for subject, last in zip(resid["subject"], resid["last"])),
        "the subject column carries more at every layer",
        resid,
    )
    claims.check(
        all(values["ablation_verdict"].values())
        and all(r["top heads"] < r["bottom heads"] - 1.0 for r in values["ablation"].values()),
        "zero-ablating the top heads hurts much more than ablating as many other heads, beyond noise",
        values["ablation"],
    )
    claims.check(
        values["strongest_reads_subject"], "the strongest head attends from the last position to the subject", 0
    )
    z_pre_gate, gate = values["strongest_gated_head"]
    claims.check(
        z_pre_gate > 0.5 and abs(gate) < 0.05,
        "the strongest gated head's effect goes through its attention output, hardly through its gate",
        values["strongest_gated_head"],
    )
    claims.check(values["tl_gate_difference"] <= 1e-4, "TransformerLens' sweep equals patch_heads", values)
    claims.check(
        all(gain < 1.0 for gain in values["induction"].values()),
        "a task the bundled tiny models cannot do yet: induction",
        values["induction"],
    )


# ---- 05 -----------------------------------------------------------------------------------------
HYBRIDS = ("hybrid_gated", "hybrid_ungated")
RECORD_05 = {
    "n_windows": "int(tokens.shape[0])",
    "layer_types": "{n: list(m.cfg.layer_types) for n, m in hybrids.items()}",
    "d_model": "{n: m.cfg.d_model for n, m in hybrids.items()}",
    "only_gated": "only_gated",
    "table": "{n: {c: float(r[c]) for c in ('first_token_attention', 'sink_rate', 'mean_gate', 'loss')} "
    "for n, r in table.iterrows()}",
    "first_by_layer": "{n: v.tolist() for n, v in first_by_layer.items()}",
    "uniform": "uniform[0]",
    "pair_gap": "pair_gap",
    "ratio_first": "ratio_first",
    "raw": "raw",
    "ratio": "ratio",
    "sink_ci": "{n: [float(table.loc[n, 'sink_rate_lo']), float(table.loc[n, 'sink_rate_hi'])] for n in hybrids}",
    "at_first_token": "{n: int(f.loc[f.ratio.idxmax(), 'position']) for n, f in massive.items()}",
    "n_massive": "{n: int(f.n_massive.sum()) for n, f in massive.items()}",
    "gates": "gate_table.drop(columns=['label']).to_dict(orient='list')",
    "paper_gates": "{n: [float(f.mean_gate.mean()), float(f[f.layer == f.layer.max()].mean_gate.mean())] "
    "for n, f in paper_gates.items()}",
    "linear": "{n: s[['label', 'layer', 'half_life', 'gate_abs', 'gate_frac_near_zero']].to_dict(orient='list') "
    "for n, s in linear.items()}",
    "effects": "{n: f[['delta_loss', 'delta_loss_lo']].to_dict(orient='index') for n, f in effects.items()}",
    "task": "{n: {k: float(v) for k, v in r.items()} for n, r in task.iterrows()}",
    "does_task": "does_task",
    "head_effects": "{n: v.tolist() for n, v in head_effects.items()}",
    "gate_effects": "{n: v.tolist() for n, v in gate_effects.items()}",
    "top_heads": "top_heads",
}


def check_05(values: dict, claims: Claims) -> None:
    claims.check(values["n_windows"] == 64, "the 64 held-out windows of 128 tokens the model cards measure on", values)
    claims.check(
        all(t == ["linear_attention"] * 3 + ["full_attention"] for t in values["layer_types"].values()),
        "4 layers, layers 0-2 linear_attention and layer 3 full_attention",
        values["layer_types"],
    )
    claims.check(set(values["d_model"].values()) == {128}, "d_model 128", values["d_model"])
    claims.check(
        values["only_gated"]
        == ["blocks.3.attn.hook_gate", "blocks.3.attn.hook_gate_logits", "blocks.3.attn.hook_z_pre_gate"],
        "hybrid_ungated is identical without the gate (only the gate's hooks differ)",
        values["only_gated"],
    )
    table, first = values["table"], values["first_by_layer"]
    # Section 2: the pair.
    claims.check(
        [table[n]["first_token_attention"] for n in ("hybrid_ungated", "hybrid_gated")]
        == [stated("0.193"), stated("0.096")],
        "the gate halves the full-attention layer's attention to the first token: 0.193 against 0.096",
        table,
    )
    claims.check(values["ratio_first"] == stated("2.01"), "(2.01x", values["ratio_first"])
    claims.check(
        values["pair_gap"]["first-token attention"] == [stated("0.097"), stated("0.085"), stated("0.110")],
        "paired difference +0.097, 95% interval +0.085 to +0.110",
        values["pair_gap"],
    )
    paper_layer3 = [first[n][3] for n in ("baseline", "gate_headwise", "gate_elementwise")]
    claims.check(
        paper_layer3 == [stated("0.056"), stated("0.032"), stated("0.030")] and values["uniform"] == stated("0.035"),
        "the uniform level (0.035); layer 3 of the paper-layout models: 0.056, 0.032 and 0.030",
        (first, values["uniform"]),
    )
    claims.check(
        all(first[n][3] > max(values["uniform"], *paper_layer3) for n in HYBRIDS),
        "Both are above the uniform level and above layer 3 of every paper-layout model",
        first,
    )
    baseline = first["baseline"]
    claims.check(
        first["hybrid_ungated"][3] > max(baseline)
        and max(baseline) == stated("0.146")
        and baseline.index(max(baseline)) == 2,
        "the ungated hybrid more than the baseline does in any layer (at most 0.146, layer 2)",
        first,
    )
    claims.check(
        table["hybrid_ungated"]["sink_rate"] == stated("0.078")
        and values["sink_ci"]["hybrid_ungated"] == [stated("0.035"), stated("0.121")]
        and table["hybrid_gated"]["sink_rate"] == 0
        and table["baseline"]["sink_rate"] == stated("0.021"),
        "sink rate 0.078 (95% interval 0.035 to 0.121), against 0 for the gated one and 0.021 for the baseline",
        (table, values["sink_ci"]),
    )
    raw, ratio = values["raw"], values["ratio"]
    claims.check(
        [raw["hybrid_ungated"], raw["hybrid_gated"], raw["baseline"]]
        == [stated("11.4"), stated("5.55"), stated("31.7")]
        and 1.9 < raw["hybrid_ungated"] / raw["hybrid_gated"] < 2.1,
        "The gate also halves the largest activation, 11.4 ungated against 5.55 gated (31.7 in the baseline)",
        raw,
    )
    claims.check(
        [ratio["hybrid_ungated"], ratio["baseline"], ratio["hybrid_gated"]]
        == [stated("113"), stated("85", about=1), stated("59")],
        "the ungated hybrid's largest value is 113x its median, above the baseline's 85x, the gated one's 59x",
        ratio,
    )
    claims.check(
        set(values["at_first_token"].values()) == {0} and set(values["n_massive"].values()) == {0},
        "In every model it sits at the first token, and no value is massive by Sun et al.'s definition",
        values,
    )
    loss_gap = values["pair_gap"]["loss"]
    claims.check(
        loss_gap == [stated("0.003"), stated("-0.013"), stated("0.018")] and loss_gap[1] < 0 < loss_gap[2],
        "The held-out loss does not tell the pair apart (+0.003 nats per window, paired interval -0.013 to +0.018)",
        loss_gap,
    )
    paper_losses = [table[n]["loss"] for n in ("baseline", *GATED)]
    claims.check(
        [table["hybrid_gated"]["loss"], table["hybrid_ungated"]["loss"]] == [stated("3.799"), stated("3.802")]
        and [min(paper_losses), max(paper_losses)] == [stated("3.836"), stated("3.896")],
        "both hybrids are below the paper-layout models (3.799 and 3.802 against 3.836-3.896)",
        table,
    )
    # Section 3: the gates.
    gates, paper = values["gates"], values["paper_gates"]["gate_elementwise"]
    claims.check(
        table["hybrid_gated"]["mean_gate"] == stated("0.304") and paper == [stated("0.277"), stated("0.244")],
        "a mean of 0.304 over the heads of layer 3 (0.277 over all of gate_elementwise, 0.244 in its layer 3)",
        (table["hybrid_gated"], paper),
    )
    below = gates["gate_frac_below_0.1"]
    claims.check(
        [min(below), max(below)] == [stated("0.21", about=0.005), stated("0.28", about=0.005)],
        "21-28% of the values below 0.1 in each head",
        below,
    )
    claims.check(
        all(p < o for p, o in zip(gates["gate_pos0"], gates["gate_other"]))
        and [min(gates["gate_pos0"]), max(gates["gate_pos0"])] == [stated("0.14"), stated("0.16")]
        and [min(gates["gate_other"]), max(gates["gate_other"])] == [stated("0.27"), stated("0.33")],
        "Every head gates the first token more tightly (gate_pos0 0.14-0.16 against gate_other 0.27-0.33)",
        gates,
    )
    ungated_heads = gates["first_token_attention (hybrid_ungated)"]
    gated_heads = gates["first_token_attention (hybrid_gated)"]
    claims.check(
        [min(ungated_heads), max(ungated_heads), min(gated_heads), max(gated_heads)]
        == [stated("0.12"), stated("0.24"), stated("0.03"), stated("0.15")],
        "Head by head, layer 3 of the ungated model gives the first token 0.12-0.24, that of the gated one 0.03-0.15",
        gates,
    )
    linear = values["linear"]
    gated_lin = linear["hybrid_gated"]
    slowest = max(range(len(gated_lin["label"])), key=lambda i: gated_lin["half_life"][i])
    claims.check(
        max(max(s["half_life"]) for s in linear.values()) == stated("4.2") and gated_lin["label"][slowest] == "L2H2",
        "every head's state halves within 4.2 tokens (the slowest, L2H2 of hybrid_gated)",
        linear,
    )
    for name, (first_layer, last_layer) in (("hybrid_gated", ("0.34", "1.86")), ("hybrid_ungated", ("0.39", "1.58"))):
        s = linear[name]
        means = [
            sum(h for h, layer in zip(s["half_life"], s["layer"]) if layer == k) / s["layer"].count(k)
            for k in (0, 1, 2)
        ]
        claims.check(
            means == sorted(means) and [means[0], means[2]] == [stated(first_layer), stated(last_layer)],
            f"the mean half-life grows with depth ({name}: {first_layer} to {last_layer} tokens)",
            means,
        )
    gate_abs = [g for s in linear.values() for g in s["gate_abs"]]
    near_zero = [g for s in linear.values() for g in s["gate_frac_near_zero"]]
    claims.check(
        [min(gate_abs), max(gate_abs)] == [stated("0.19"), stated("0.34")]
        and [min(near_zero), max(near_zero)] == [stated("0.18"), stated("0.34")],
        "the mean |silu(z)| is 0.19-0.34 per head and 18-34% of the values are below 0.1, in both models",
        (gate_abs, near_zero),
    )
    # Section 4: ablation.
    effects = values["effects"]
    opened = {n: effects[n]["silu(z) = 1 on the linear layers"]["delta_loss"] for n in HYBRIDS}
    claims.check(
        [opened["hybrid_gated"], opened["hybrid_ungated"]] == [stated("3.12"), stated("2.82")]
        and all(opened[n] == max(r["delta_loss"] for r in effects[n].values()) for n in HYBRIDS),
        "Taking the DeltaNet output gates out costs the most by far: +3.12 gated and +2.82 ungated",
        opened,
    )
    gated_fx = effects["hybrid_gated"]
    claims.check(
        gated_fx["sigmoid gates = 1 (open)"]["delta_loss"] == stated("0.86")
        and gated_fx["sigmoid gates = their mean"]["delta_loss"] == stated("0.062"),
        "Opening the sigmoid gates of layer 3 costs +0.86, fixing them at their mean only +0.062",
        gated_fx,
    )
    heads = {n: {k: r["delta_loss"] for k, r in effects[n].items() if k.startswith("zero")} for n in HYBRIDS}
    costliest = {n: max(h, key=h.get) for n, h in heads.items()}
    claims.check(
        costliest == {"hybrid_gated": "zero L2H1", "hybrid_ungated": "zero L0H0"}
        and [heads["hybrid_gated"]["zero L2H1"], heads["hybrid_ungated"]["zero L0H0"]]
        == [stated("0.083"), stated("0.073")]
        and heads["hybrid_ungated"]["zero L2H1"] == stated("0.073"),
        "a linear-attention head costs the most (L2H1 gated +0.083; L0H0 ungated +0.073, L2H1 behind at +0.073)",
        heads,
    )
    costliest_full = {n: max((k for k in h if k.startswith("zero L3")), key=h.get) for n, h in heads.items()}
    claims.check(
        set(costliest_full.values()) == {"zero L3H2"}
        and [heads[n]["zero L3H2"] for n in HYBRIDS] == [stated("0.073"), stated("0.055")],
        "L3H2 is the costliest full-attention head in both (+0.073 and +0.055)",
        heads,
    )
    claims.check(
        min(r["delta_loss_lo"] for n in HYBRIDS for k, r in effects[n].items() if k.startswith("zero")) > 0,
        "every head's cost is beyond noise",
        effects,
    )
    # Section 5: patching.
    task = values["task"]
    claims.check(
        [[task[n][k] for k in ("metric clean", "metric corrupted", "gap")] for n in HYBRIDS]
        == [[stated("2.28"), stated("-1.28"), stated("3.55")], [stated("1.60"), stated("-1.78"), stated("3.38")]],
        "+2.28 and -1.28 in the gated hybrid (gap 3.55), +1.60 and -1.78 in the ungated one (gap 3.38)",
        task,
    )
    trio = [task[n]["gap"] for n in ("baseline", *GATED)]
    claims.check(
        [min(trio), max(trio)] == [stated("3.30"), stated("3.49")]
        and all(
            task[n][k] == 1 for n in task for k in ("clean prompts with she > he", "corrupted prompts with he > she")
        ),
        "against gaps of 3.30-3.49 for the trio, with the sign right on every prompt",
        task,
    )
    claims.check(values["does_task"] == list(HYBRIDS), "Both hybrids do the task", values["does_task"])
    effect, gate = values["head_effects"], values["gate_effects"]
    claims.check(
        values["top_heads"]["hybrid_gated"][0] == [3, 1] and effect["hybrid_gated"][3][1] == stated("1.00"),
        "in the gated hybrid one head, L3H1, restores all of it (1.00) through its output z",
        effect,
    )
    claims.check(
        values["top_heads"]["hybrid_ungated"][:2] == [[3, 0], [3, 1]]
        and effect["hybrid_ungated"][3][:2] == [stated("0.77"), stated("0.28")],
        "in the ungated one two heads share it (L3H0 0.77, L3H1 0.28)",
        effect,
    )
    linear_effects = [abs(x) for n in HYBRIDS for row in effect[n][:3] for x in row]
    gate_values = [abs(x) for n in HYBRIDS for row in gate[n] for x in row if x == x]  # x == x: not NaN
    claims.check(
        max(linear_effects) < 0.01 and max(gate_values) < 0.04,
        "No single linear-attention value head restores more than 0.01, and no gate of either kind more than 0.04",
        (max(linear_effects), max(gate_values)),
    )
    # Recap: the same numbers, restated.
    claims.check(
        [table[n]["first_token_attention"] for n in ("hybrid_gated", "hybrid_ungated")]
        == [stated("0.096"), stated("0.193")]
        and [table[n]["sink_rate"] for n in ("hybrid_gated", "hybrid_ungated")] == [0, stated("0.078")]
        and [raw["hybrid_gated"], raw["hybrid_ungated"]] == [stated("5.55"), stated("11.4")]
        and loss_gap[0] == stated("0.003"),
        "Recap: 0.096 against 0.193, sink rate 0 against 0.078, 5.55 against 11.4, loss difference +0.003",
        (table, raw, loss_gap),
    )
    claims.check(
        table["hybrid_gated"]["mean_gate"] == stated("0.304")
        and [opened["hybrid_gated"], opened["hybrid_ungated"]] == [stated("3.12"), stated("2.82")]
        and gated_fx["sigmoid gates = 1 (open)"]["delta_loss"] == stated("0.86"),
        "Recap: mean gate 0.304; +3.12 and +2.82 nats when silu(z) is set to 1, against +0.86 for opening the gates",
        (table, opened, gated_fx),
    )


FACTS: dict[str, tuple[dict[str, str], Callable[[dict, Claims], None]]] = {
    "01_quickstart": (RECORD_01, check_01),
    "02_attention_sinks": (RECORD_02, check_02),
    "03_gate_sparsity": (RECORD_03, check_03),
    "04_patching": (RECORD_04, check_04),
    "05_gated_attention_as_it_ships": (RECORD_05, check_05),
}


def recording_cell(expressions: dict[str, str]) -> str:
    """Source of a cell that prints `{name: value of expression}` as one JSON line."""
    items = "".join(f"    {name!r}: {expression},\n" for name, expression in expressions.items())
    return f"import json as _json\n\nprint({RECORD_MARKER!r} + _json.dumps({{\n{items}}}, default=float))\n"


def recorded_values(executed: Path) -> dict:
    """The JSON line the recording cell printed, read from the executed notebook's outputs."""
    last = nbformat.read(executed, as_version=4).cells[-1]
    text = "".join(output.get("text", "") for output in last.outputs if output.get("output_type") == "stream")
    (line,) = [line for line in text.splitlines() if line.startswith(RECORD_MARKER)]
    return json.loads(line.removeprefix(RECORD_MARKER))


def test_every_notebook_is_tested():
    assert sorted(p.stem for p in NOTEBOOKS_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS) == sorted(FACTS)


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_and_prints_what_its_text_says(name: str, tmp_path: Path) -> None:
    require_bundled()
    if name == "05_gated_attention_as_it_ships":
        require_bundled("tiny_hybrid")
    expressions, check = FACTS[name]
    notebook = nbformat.read(NOTEBOOKS_DIR / f"{name}.ipynb", as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell(recording_cell(expressions)))
    source, executed = tmp_path / f"{name}_source.ipynb", tmp_path / f"{name}.ipynb"
    nbformat.write(notebook, source)
    started = time.time()
    # A cell that raises (the notebooks' own asserts included) makes papermill raise
    # PapermillExecutionError, which fails the test.
    papermill.execute_notebook(
        str(source),
        str(executed),
        parameters={"SIZE": "tiny", "DEVICE": "cpu"},
        kernel_name="python3",
        cwd=str(NOTEBOOKS_DIR),
        progress_bar=False,
    )
    print(f"{name}: {time.time() - started:.1f} s")
    claims = Claims(name)
    check(recorded_values(executed), claims)
    claims.report()
