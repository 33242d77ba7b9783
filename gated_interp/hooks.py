"""Every hook point of `HookedGatedQwen3`, listed once.

`HOOKS` is the one table: each `HookSpec` gives a hook's short name (TransformerLens'
`get_act_name` vocabulary, so `cache["gate", 3]` and `utils.get_act_name("gate", 3)` both work),
its full-name template, the module it sits in, its axes, whether only gated models have it and
which `cfg.use_*` switch turns it on. The cache's short keys, `model.hook_dict` / `run_with_hooks`
name resolution, `run_with_cache(pos_slice=...)`, the analysis readers, the patching sites and the
README's hook table are all read off it.

Names a TransformerLens user may type that are not where the hook sits resolve too (`aliases`):
`get_act_name("gate", 3)` gives `blocks.3.hook_gate` (TransformerLens only knows its own attention
hooks), TransformerLens 2.x puts the split inputs at `blocks.{l}.hook_q_input`; `resolve` maps them
to the one real name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache, lru_cache

# A hook's axes use the glossary of `gated_interp.components`; `one` is a size-1 axis.


@dataclass(frozen=True)
class HookSpec:
    """One hook point.

    short:     TransformerLens short name (`cache[short, layer]`); RMSNorm hooks share `scale` /
               `normalized` and are told apart by `where` (`get_act_name("scale", 2, "ln1")`).
    template:  full name, with `{layer}` for per-block hooks.
    where:     the module it sits in ("model", "block", "attn", "mlp", "ln1", "ln2", "ln_final").
    axes:      space-separated axis names of the batched tensor.
    gated_only: exists only on gated models (cfg.is_gated).
    switch:    the `cfg` flag (and `model.set_<flag>` toggle) that makes it fire, or None (always).
    needs_qk_norm: exists only with cfg.use_qk_norm.
    layer_type: exists only on layers of this type ("full_attention" or "linear_attention",
               `cfg.layer_types`), or on every layer (None).
    mlp_kind:  exists only on layers with this MLP ("dense" or "moe", `cfg.mlp_kind`), or on all (None).
    aliases:   other full-name templates that resolve to this hook.
    doc:       what it holds, for the README table.
    """

    short: str
    template: str
    where: str
    axes: str
    doc: str
    gated_only: bool = False
    switch: str | None = None
    needs_qk_norm: bool = False
    layer_type: str | None = None
    mlp_kind: str | None = None
    aliases: tuple[str, ...] = ()

    @property
    def per_layer(self) -> bool:
        return "{layer}" in self.template

    @property
    def axis_names(self) -> tuple[str, ...]:
        return tuple(self.axes.split())

    @property
    def pos_dim(self) -> int:
        """The (query) position axis, counted from the end (so it holds without the batch axis)."""
        names = self.axis_names
        pos = "q_pos" if "q_pos" in names else "pos"
        return names.index(pos) - len(names)

    @property
    def head_dim(self) -> int | None:
        """The head axis (query or key-value heads) from the end, or None."""
        names = self.axis_names
        for axis in ("head", "kv_head"):
            if axis in names:
                return names.index(axis) - len(names)
        return None

    def name(self, layer: int | None = None) -> str:
        if self.per_layer:
            if layer is None:
                raise ValueError(
                    f"{self.short!r} is a per-layer hook: give a layer, e.g. {self.template.format(layer=0)}"
                )
            return self.template.format(layer=layer)
        return self.template

    def exists_in(self, cfg) -> bool:
        """Whether a model with config `cfg` has this hook point (on at least one layer)."""
        return any(self.exists_at(cfg, layer) for layer in range(cfg.n_layers)) or (
            not self.per_layer and self._model_has(cfg)
        )

    def exists_at(self, cfg, layer: int | None) -> bool:
        """Whether a model with config `cfg` has this hook point at `layer` (None for model-level hooks)."""
        if not self._model_has(cfg):
            return False
        if layer is None or not self.per_layer:
            return True
        return (self.layer_type is None or cfg.layer_type(layer) == self.layer_type) and (
            self.mlp_kind is None or cfg.mlp_kind(layer) == self.mlp_kind
        )

    def _model_has(self, cfg) -> bool:
        return (cfg.is_gated or not self.gated_only) and (cfg.use_qk_norm or not self.needs_qk_norm)

    def absent_because(self, cfg, layer: int | None) -> str:
        """Why `cfg`'s model has no such hook (at `layer`), for error messages; "" if it has one."""
        if self.exists_at(cfg, layer):
            return ""
        if self.gated_only and not cfg.is_gated:
            return "it is gated-only: only gated models have it"
        if self.needs_qk_norm and not cfg.use_qk_norm:
            return "it is only there with use_qk_norm: it needs cfg.use_qk_norm"
        if self.layer_type is not None and cfg.layer_type(layer) != self.layer_type:
            where = cfg.full_attention_layers if self.layer_type == "full_attention" else cfg.linear_attention_layers
            return (
                f"layer {layer} is a {cfg.layer_type(layer)} layer and {self.short!r} exists only on "
                f"{self.layer_type} layers: {list(where)} (see model.cfg.layer_types)"
            )
        moe = list(cfg.moe_layers)
        return (
            f"layer {layer} has a {cfg.mlp_kind(layer)} MLP and {self.short!r} exists only on {self.mlp_kind} MLPs"
            + (f" (MoE layers: {moe})" if moe else "")
        )


_B = "blocks.{layer}"
_HEAD_POS = "batch pos head"


def _attn(short: str, axes: str, doc: str, *, tl_knows: bool = False, **kw) -> HookSpec:
    # get_act_name puts attention hooks it does not know at blocks.{l}.hook_<short>
    aliases = kw.pop("aliases", ()) + (() if tl_knows else (f"{_B}.hook_{short}",))
    return HookSpec(
        short, f"{_B}.attn.hook_{short}", "attn", axes, doc, aliases=aliases, layer_type="full_attention", **kw
    )


def _linear(short: str, name: str, axes: str, doc: str) -> HookSpec:
    """A Gated DeltaNet hook; its short name differs from the attention's where both have the
    hook (`lin_q` beside `q`), so `cache[short, l]` names one hook."""
    return HookSpec(
        short,
        f"{_B}.linear_attn.hook_{name}",
        "linear_attn",
        axes,
        doc,
        aliases=(f"{_B}.hook_{short}",),
        layer_type="linear_attention",
    )


def _mlp(short: str, name: str, axes: str, doc: str, kind: str) -> HookSpec:
    return HookSpec(short, f"{_B}.mlp.{name}", "mlp", axes, doc, aliases=(f"{_B}.hook_{short}",), mlp_kind=kind)


_LIN_K, _LIN_V = "batch pos lin_k_head d_lin_key", "batch pos lin_v_head d_lin_value"


def _norm(where: str, prefix: str) -> tuple[HookSpec, HookSpec]:
    return (
        HookSpec("scale", f"{prefix}.hook_scale", where, "batch pos one", f"`{where}` RMSNorm divisor"),
        HookSpec(
            "normalized", f"{prefix}.hook_normalized", where, "batch pos d_model", f"`{where}` output before its weight"
        ),
    )


HOOKS: tuple[HookSpec, ...] = (
    HookSpec("tokens", "hook_tokens", "model", "batch pos", "input token ids", switch="use_hook_tokens"),
    HookSpec("embed", "hook_embed", "model", "batch pos d_model", "token embeddings"),
    HookSpec("resid_pre", f"{_B}.hook_resid_pre", "block", "batch pos d_model", "residual stream entering the block"),
    *_norm("ln1", f"{_B}.ln1"),
    _attn(
        "q_input",
        f"{_HEAD_POS} d_model",
        "per-head copy of `resid_pre` that the query (and gate) read, before `ln1`",
        switch="use_split_qkv_input",
        aliases=(f"{_B}.hook_q_input",),
        tl_knows=True,
    ),
    _attn(
        "k_input",
        "batch pos kv_head d_model",
        "per-key-value-head copy of `resid_pre` for the keys",
        switch="use_split_qkv_input",
        aliases=(f"{_B}.hook_k_input",),
        tl_knows=True,
    ),
    _attn(
        "v_input",
        "batch pos kv_head d_model",
        "per-key-value-head copy of `resid_pre` for the values",
        switch="use_split_qkv_input",
        aliases=(f"{_B}.hook_v_input",),
        tl_knows=True,
    ),
    _attn(
        "attn_in",
        f"{_HEAD_POS} d_model",
        "one per-head copy of `resid_pre` for q, k, v and gate (kv head j reads copy j)",
        switch="use_attn_in",
        aliases=(f"{_B}.hook_attn_in",),
        tl_knows=True,
    ),
    _attn("q", f"{_HEAD_POS} d_head", "raw query projection (before `q_norm`)", tl_knows=True),
    _attn("k", "batch pos kv_head d_head", "raw key projection", tl_knows=True),
    _attn("v", "batch pos kv_head d_head", "value projection", tl_knows=True),
    _attn("q_normed", f"{_HEAD_POS} d_head", "queries after per-head RMSNorm", needs_qk_norm=True),
    _attn("k_normed", "batch pos kv_head d_head", "keys after per-head RMSNorm", needs_qk_norm=True),
    _attn("rot_q", f"{_HEAD_POS} d_head", "queries after rotary", tl_knows=True),
    _attn("rot_k", "batch pos kv_head d_head", "keys after rotary", tl_knows=True),
    _attn("attn_scores", "batch head q_pos k_pos", "scaled, masked scores before softmax", tl_knows=True),
    _attn("pattern", "batch head q_pos k_pos", "attention weights", tl_knows=True),
    _attn("z_pre_gate", f"{_HEAD_POS} d_head", "attention output before the gate", gated_only=True),
    _attn("gate_logits", f"{_HEAD_POS} gate", "gate logits", gated_only=True),
    _attn("gate", f"{_HEAD_POS} gate", "`sigmoid(gate logits)`, the gate scores", gated_only=True),
    _attn("z", f"{_HEAD_POS} d_head", "gated output: exactly what `W_O` reads", tl_knows=True),
    _attn("result", f"{_HEAD_POS} d_model", "per-head output `z @ W_O`", switch="use_attn_result", tl_knows=True),
    _linear("lin_q", "q", _LIN_K, "Gated DeltaNet queries, after the causal convolution and SiLU"),
    _linear("lin_k", "k", _LIN_K, "Gated DeltaNet keys, after the convolution (L2-normalised inside the rule)"),
    _linear("lin_v", "v", _LIN_V, "Gated DeltaNet values, after the convolution"),
    _linear("lin_z", "z", _LIN_V, "the output gate's input: the gated norm multiplies by `silu(z)`"),
    _linear("beta", "beta", "batch pos lin_v_head", "`sigmoid(b)`, how strongly each position writes"),
    _linear(
        "decay", "decay", "batch pos lin_v_head", "log of the per-step state decay, `-exp(A_log) softplus(a + dt_bias)`"
    ),
    _linear("recurrent_out", "recurrent_out", _LIN_V, "delta-rule output, before the gated norm"),
    _linear("lin_gate", "gate", _LIN_V, "`silu(z)`, the output gate the gated norm multiplies by (float32)"),
    _linear("lin_out", "out", _LIN_V, "gated-norm output: exactly what the DeltaNet's `W_O` reads"),
    HookSpec(
        "attn_out", f"{_B}.hook_attn_out", "block", "batch pos d_model", "token mixer output (attention or DeltaNet)"
    ),
    HookSpec(
        "resid_mid", f"{_B}.hook_resid_mid", "block", "batch pos d_model", "residual stream between attention and MLP"
    ),
    HookSpec(
        "mlp_in",
        f"{_B}.hook_mlp_in",
        "block",
        "batch pos d_model",
        "copy of `resid_mid` the MLP reads, before `ln2`",
        switch="use_hook_mlp_in",
    ),
    *_norm("ln2", f"{_B}.ln2"),
    _mlp("pre", "hook_pre", "batch pos d_mlp", "MLP gate projection (before SiLU)", "dense"),
    _mlp("pre_linear", "hook_pre_linear", "batch pos d_mlp", "MLP up projection", "dense"),
    _mlp("post", "hook_post", "batch pos d_mlp", "SwiGLU output `silu(pre) * pre_linear`", "dense"),
    _mlp("router_logits", "hook_router_logits", "batch pos expert", "MoE router logits", "moe"),
    _mlp("expert_indices", "hook_expert_indices", "batch pos top_k", "the experts each token is sent to", "moe"),
    _mlp("expert_weights", "hook_expert_weights", "batch pos top_k", "their weights in the sum", "moe"),
    _mlp("shared_gate", "hook_shared_gate", "batch pos one", "`sigmoid` gate of the shared expert", "moe"),
    _mlp("shared_pre", "shared_expert.hook_pre", "batch pos d_mlp_shared", "shared expert's gate projection", "moe"),
    _mlp(
        "shared_pre_linear",
        "shared_expert.hook_pre_linear",
        "batch pos d_mlp_shared",
        "shared expert's up projection",
        "moe",
    ),
    _mlp("shared_post", "shared_expert.hook_post", "batch pos d_mlp_shared", "shared expert's SwiGLU output", "moe"),
    HookSpec("mlp_out", f"{_B}.hook_mlp_out", "block", "batch pos d_model", "MLP output"),
    HookSpec("resid_post", f"{_B}.hook_resid_post", "block", "batch pos d_model", "residual stream leaving the block"),
    *_norm("ln_final", "ln_final"),
)

GATE_HOOKS: tuple[str, ...] = tuple(spec.short for spec in HOOKS if spec.gated_only)
SWITCHES: tuple[str, ...] = tuple(dict.fromkeys(spec.switch for spec in HOOKS if spec.switch))


def spec(short: str, where: str | None = None) -> HookSpec:
    """The `HookSpec` of a short name (`where` picks among the RMSNorm hooks: ln1, ln2, ln_final)."""
    matches = [s for s in HOOKS if s.short == short and (where is None or s.where == where)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        shorts = sorted({s.short for s in HOOKS})
        raise KeyError(f"no hook called {short!r}{'' if where is None else f' in {where}'}; short names: {shorts}")
    raise KeyError(f"{short!r} is ambiguous: say which norm, e.g. where='ln1' (one of {[s.where for s in matches]})")


def hook_name(short: str, layer: int | None = None, where: str | None = None) -> str:
    """Full hook name: `hook_name("gate", 3)` is `"blocks.3.attn.hook_gate"`."""
    return spec(short, where).name(layer)


@cache
def _patterns() -> tuple[tuple[re.Pattern, HookSpec, bool], ...]:
    """(regex, spec, is_alias) for every template and alias; the layer is group 1 when present."""
    out = []
    for s in HOOKS:
        for i, template in enumerate((s.template, *s.aliases)):
            regex = re.escape(template).replace(re.escape("{layer}"), r"(\d+)")
            out.append((re.compile(f"^{regex}$"), s, i > 0))
    return tuple(out)


@lru_cache(maxsize=8192)
def lookup(name: str) -> tuple[HookSpec, int | None] | None:
    """(spec, layer) of a full hook name or alias (a trailing `_grad` is ignored), or None."""
    base = name[: -len("_grad")] if name.endswith("_grad") else name
    for regex, s, _ in _patterns():
        m = regex.match(base)
        if m:
            return s, (int(m.group(1)) if m.groups() else None)
    return None


def resolve(name: str) -> str:
    """The real hook name for any accepted spelling; names this table does not know pass through
    unchanged (so an unknown name still fails where TransformerLens would fail)."""
    found = lookup(name)
    if found is None:
        return name
    s, layer = found
    return s.name(layer) + ("_grad" if name.endswith("_grad") else "")


# TransformerLens 2.x names that have no hook of the same value here: naming them explains the
# difference instead of resolving to a hook that holds something else.
_TL2_QK_NORM = re.compile(r"^blocks\.(\d+)\.attn\.([qk])_norm\.hook_(normalized|scale)(_grad)?$")


def tl2_name_note(name: str) -> str | None:
    """Why a TransformerLens 2.x name with no exact counterpart is not a hook here (and what to use
    instead), or None for any other name.

    TransformerLens 2.x's Qwen3 hooks the q/k norms as `attn.q_norm.hook_normalized` (`q / rms(q)`,
    before `q_norm.w`) and `hook_scale` (`rms(q)`); this model hooks their output `hook_q_normed`
    (`q_norm.w * q / rms(q)`). Resolving one name to the other would hand back a different tensor."""
    m = _TL2_QK_NORM.match(name)
    if m is None:
        return None
    layer, which, part = m.group(1), m.group(2), m.group(3)
    ours = f"blocks.{layer}.attn.hook_{which}_normed"
    held = f"{which} / rms({which})" if part == "normalized" else f"rms({which})"
    return (
        f"{name!r} is TransformerLens 2.x's {which}_norm hook ({held}, before {which}_norm.w); this model hooks "
        f"the norm's output {ours!r} ({which}_norm.w * {which} / rms({which})) and, before the norm, "
        f"'blocks.{layer}.attn.hook_{which}'. Hook {ours!r} and divide by blocks[{layer}].attn.{which}_norm.w "
        f"for TransformerLens' hook_normalized, or compute rms from hook_{which}."
    )


def names_filter(*shorts: str, layers: Iterable[int] | None = None) -> Callable[[str], bool]:
    """A `names_filter` for `run_with_cache` keeping the hooks with these short names (all if none
    given), in `layers` (all if None): `names_filter("pattern", "gate", layers=[0, 1])`."""
    unknown = set(shorts) - {s.short for s in HOOKS}
    if unknown:
        raise KeyError(f"unknown short hook names {sorted(unknown)}; short names: {sorted({s.short for s in HOOKS})}")
    wanted_layers = None if layers is None else set(layers)

    def keep(name: str) -> bool:
        found = lookup(name)
        if found is None:
            return False
        s, layer = found
        if shorts and s.short not in shorts:
            return False
        return wanted_layers is None or layer is None or layer in wanted_layers

    return keep


def markdown_table() -> str:
    """The README's hook table, generated from `HOOKS` (tests/model/test_hooks_table.py keeps them equal)."""
    rows = ["| hook | short | shape | what it holds | when |", "|---|---|---|---|---|"]
    for s in HOOKS:
        when = []
        if s.gated_only:
            when.append("gated models")
        if s.needs_qk_norm:
            when.append("`use_qk_norm`")
        if s.switch:
            when.append(f"`set_{s.switch}(True)`")
        if s.layer_type:
            when.append(f"{s.layer_type} layers")
        if s.mlp_kind == "moe":
            when.append("MoE layers")
        elif s.mlp_kind:
            when.append(f"{s.mlp_kind} MLP layers")
        shape = "[" + ", ".join("1" if axis == "one" else axis for axis in s.axis_names) + "]"
        name = s.template.replace("{layer}", "{l}")
        rows.append(f"| `{name}` | `{s.short}` | `{shape}` | {s.doc} | {', '.join(when) or 'always'} |")
    return "\n".join(rows)
