"""The one hook table (`gated_interp.hooks`) is true of the model: every hook point is listed,
every listed hook exists where the table says (gated-only, qk-norm, switches), the axes it gives
are the cached shapes, and the README's hook table is the generated one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import PARITY_BUNDLED, RANDOM_WITH_BIASES, parity_model
from transformer_lens.utilities import get_act_name

from gated_interp import hooks
from gated_interp.config import GATE_KINDS, VARIANT_GATES, GatedQwen3Config, gate_of, variant_of

MODELS = PARITY_BUNDLED + tuple(RANDOM_WITH_BIASES)
README = Path(__file__).resolve().parents[2] / "README.md"


def _switch_everything_on(model) -> None:
    model.set_use_attn_result(True)
    model.set_use_split_qkv_input(True)
    model.set_use_hook_mlp_in(True)
    model.set_use_hook_tokens(True)


@pytest.mark.parametrize("kind", MODELS)
@torch.no_grad()
def test_every_hook_point_is_in_the_table_with_its_shape(parity_dirs, kind):
    model = parity_model(kind, parity_dirs)
    cfg = model.cfg
    listed = {s.name(layer) for s in hooks.HOOKS if s.exists_in(cfg) for layer in range(cfg.n_layers)}
    assert set(model.hook_dict) == listed
    _switch_everything_on(model)
    batch, pos = 2, 5
    tokens = torch.randint(0, cfg.d_vocab, (batch, pos), generator=torch.Generator().manual_seed(0))
    _, cache = model.run_with_cache(tokens)
    size = {
        "batch": batch, "pos": pos, "q_pos": pos, "k_pos": pos, "head": cfg.n_heads,
        "kv_head": cfg.n_key_value_heads, "d_head": cfg.d_head, "gate": cfg.gate_width, "d_model": cfg.d_model,
        "d_mlp": cfg.d_mlp, "one": 1,
    }  # fmt: skip
    # everything but hook_attn_in fires (use_attn_in and use_split_qkv_input exclude each other)
    assert set(cache.keys()) == {name for name in listed if not name.endswith("hook_attn_in")}
    for name, value in cache.items():
        spec, _ = hooks.lookup(name)
        assert tuple(value.shape) == tuple(size[a] for a in spec.axis_names), name


def test_gated_only_and_qk_norm_hooks_follow_the_config():
    for gate in GATE_KINDS:
        for qk_norm in (True, False):
            cfg = GatedQwen3Config(32, 1, 2, 8, 16, 11, gate=gate, use_qk_norm=qk_norm, device="cpu")
            shorts = {s.short for s in hooks.HOOKS if s.exists_in(cfg)}
            assert ("gate" in shorts) == (gate != "none") == cfg.is_gated
            assert {"z_pre_gate", "gate_logits"} <= shorts or gate == "none"
            assert ("q_normed" in shorts) == ("k_normed" in shorts) == qk_norm


def test_names_and_aliases_resolve():
    assert hooks.hook_name("gate", 3) == "blocks.3.attn.hook_gate"
    assert hooks.hook_name("scale", 1, where="ln2") == "blocks.1.ln2.hook_scale"
    assert hooks.hook_name("embed") == "hook_embed"
    with pytest.raises(KeyError, match="ambiguous"):
        hooks.hook_name("scale", 1)
    with pytest.raises(ValueError, match="give a layer"):
        hooks.hook_name("gate")
    # what TransformerLens' get_act_name builds for the gate hooks it does not know
    for short in ("gate", "gate_logits", "z_pre_gate", "q_normed", "k_normed"):
        assert hooks.resolve(get_act_name(short, 2)) == f"blocks.2.attn.hook_{short}"
    for short in ("q", "k", "v", "z", "rot_q", "rot_k", "pattern", "attn_scores", "result"):
        assert hooks.resolve(get_act_name(short, 2)) == get_act_name(short, 2) == f"blocks.2.attn.hook_{short}"
    # TransformerLens 2.x's block-level split inputs
    for short in ("q_input", "k_input", "v_input", "attn_in"):
        assert hooks.resolve(f"blocks.0.hook_{short}") == f"blocks.0.attn.hook_{short}"
    assert hooks.resolve(get_act_name("mlp_in", 1)) == "blocks.1.hook_mlp_in"
    assert hooks.resolve("blocks.0.hook_gate_grad") == "blocks.0.attn.hook_gate_grad"
    assert hooks.resolve("not.a.hook") == "not.a.hook"


def test_names_filter():
    keep = hooks.names_filter("gate", "pattern", layers=[1])
    names = [s.name(layer) for s in hooks.HOOKS for layer in range(3)]
    assert sorted({n for n in names if keep(n)}) == ["blocks.1.attn.hook_gate", "blocks.1.attn.hook_pattern"]
    assert hooks.names_filter()("hook_embed") and not hooks.names_filter("gate")("hook_embed")
    with pytest.raises(KeyError, match="unknown short hook names"):
        hooks.names_filter("gates")


def test_pos_and_head_axes():
    assert hooks.spec("gate").pos_dim == -3 and hooks.spec("gate").head_dim == -2
    assert hooks.spec("pattern").pos_dim == -2 and hooks.spec("pattern").head_dim == -3
    assert hooks.spec("k_normed").head_dim == -2  # kv heads
    assert hooks.spec("resid_post").pos_dim == -2 and hooks.spec("resid_post").head_dim is None
    assert hooks.spec("tokens").pos_dim == -1


def test_variant_table():
    assert VARIANT_GATES == {"baseline": "none", "gate_headwise": "headwise", "gate_elementwise": "elementwise"}
    # loading.resolve keeps its own tuple so that `gated-interp --help` imports no torch: same names, same order
    from gated_interp.loading.resolve import VARIANTS

    assert VARIANTS == tuple(VARIANT_GATES)
    for variant, gate in VARIANT_GATES.items():
        assert variant_of(gate) == variant and gate_of(variant) == gate
    with pytest.raises(ValueError, match="unknown variant"):
        gate_of("gate_both")
    with pytest.raises(ValueError, match="gate must be one of"):
        variant_of("sideways")


def test_readme_hook_table_is_the_generated_one():
    assert hooks.markdown_table() in README.read_text(encoding="utf-8"), (
        "README's hook table differs from gated_interp.hooks.HOOKS: paste gated_interp.hooks.markdown_table()"
    )


def test_no_module_builds_hook_names_by_hand():
    """Hook names come from `hooks.hook_name` / `names_filter`; an f-string such as
    `f"blocks.{layer}.attn.hook_z"` outside `hooks.py` is a second copy of the table."""
    import re

    package = Path(hooks.__file__).resolve().parent
    by_hand = re.compile(r"""f["'][^"']*(blocks\.\{[^}]*\}[^"']*hook_|hook_\{)""")
    found = [
        f"{path.relative_to(package)}:{number}: {line.strip()}"
        for path in sorted(package.rglob("*.py"))
        if path.name != "hooks.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if by_hand.search(line)
    ]
    assert by_hand.search('x = f"blocks.{layer}.attn.hook_z"')  # the pattern catches the habit
    assert found == [], "\n".join(found)
