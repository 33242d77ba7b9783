"""Shape annotations: checked at runtime in this suite, and every axis name in the glossary.

pytest runs with `--jaxtyping-packages=gated_interp,beartype.beartype` (pyproject.toml), so every
call into the package during the tests checks its arguments and return value against the
jaxtyping annotations, as TransformerLens' test suite does.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import jaxtyping
import pytest
import torch

import gated_interp
from gated_interp import components
from gated_interp.model import HookedGatedQwen3

PACKAGE = Path(gated_interp.__file__).resolve().parent
# jaxtyping's dtypes, and the package's own (gated_interp.masks.Mask: bool or integer attention masks).
DTYPES = {"Float", "Int", "Bool", "Shaped", "Num", "Real", "Integer", "Inexact", "UInt", "Complex", "Key", "Mask"}


def glossary() -> dict[str, str]:
    """Axis name -> meaning, from the glossary in `gated_interp.components`' docstring."""
    text = components.__doc__.split("Axis glossary", 1)[1]
    return dict(re.findall(r"^ {4}(\w+) {2,}(.+)$", text, flags=re.MULTILINE))


def annotated_axes() -> dict[str, list[str]]:
    """Axis name -> `file:line` of each jaxtyping annotation in the package that uses it."""
    found: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name)):
                continue
            if node.value.id not in DTYPES or not isinstance(node.slice, ast.Tuple) or len(node.slice.elts) != 2:
                continue
            dims = node.slice.elts[1]
            if not (isinstance(dims, ast.Constant) and isinstance(dims.value, str)):
                continue
            for token in dims.value.split():
                # "*head" (variadic), "#pos" (broadcastable), "_pos" (unchecked), "pos-1" (expression)
                for name in re.findall(r"[A-Za-z]\w*", token.lstrip("*#_")):
                    found.setdefault(name, []).append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    return found


def test_every_annotated_axis_is_in_the_glossary():
    axes = annotated_axes()
    assert sum(len(places) for places in axes.values()) > 100, "the scan found too few annotations"
    missing = {name: places for name, places in axes.items() if name not in glossary()}
    assert not missing, f"axis names missing from the glossary in gated_interp/components/__init__.py: {missing}"


def test_the_glossary_lists_only_axes_in_use():
    unused = sorted(set(glossary()) - set(annotated_axes()))
    assert not unused, f"glossary entries no annotation uses (remove them): {unused}"


def test_shapes_are_checked_at_runtime():
    logits = torch.zeros(2, 5, 7)
    with pytest.raises(jaxtyping.TypeCheckError, match="tokens"):
        HookedGatedQwen3.loss_fn(logits, torch.zeros(2, 4, dtype=torch.long))  # pos 4 != logits' pos 5
