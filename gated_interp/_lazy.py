"""Lazy module attributes (PEP 562) for the package's `__init__` files: each exported name is
imported from the module that defines it on first use, so that `import gated_interp` and
`gated-interp --help` need no torch."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def lazy_attributes(
    package: str, names: Mapping[str, str], submodules: Iterable[str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`(__getattr__, __dir__)` for `package`: `names` maps an exported name to the module that
    defines it; `submodules` are imported as `package.<name>` on first access."""
    submodules = frozenset(submodules)
    module = sys.modules[package]

    def __getattr__(name: str) -> Any:
        if name in names:
            value = getattr(importlib.import_module(names[name]), name)
        elif name in submodules:
            value = importlib.import_module(f"{package}.{name}")
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        setattr(module, name, value)  # later look-ups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(module)) | set(names) | submodules)

    return __getattr__, __dir__
