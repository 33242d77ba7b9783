"""Warnings reported at the user's line, not inside the library that raised them.

A hook-filter, truncation or padding warning raised deep in `run_with_cache` (reached through
TransformerLens, torch's module call and, under runtime type checking, jaxtyping's wrappers) is
only useful if it points at the line that made the call.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings


# Frames in these places are the library's, not the user's: a warning about a hook filter is
# reported at the first frame outside them (run_with_cache reaches the check through
# TransformerLens; under runtime type checking every call also passes through jaxtyping).
def _package_dir(name: str) -> str | None:
    module = sys.modules.get(name)
    return os.path.dirname(module.__file__) + os.sep if module is not None and module.__file__ else None


def _library_places() -> tuple[str, ...]:
    dirs = [_package_dir(name) for name in ("gated_interp", "transformer_lens", "torch", "jaxtyping", "beartype")]
    return (*[d for d in dirs if d], contextlib.__file__, "<")


def warn_at_user_line(message: str) -> None:
    """`warnings.warn(message)` reported at the user's line: the first frame outside gated_interp,
    TransformerLens, torch, contextlib, jaxtyping, beartype and generated wrappers."""
    places = _library_places()
    frame = sys._getframe(1)
    while frame.f_back is not None and frame.f_code.co_filename.startswith(places):
        frame = frame.f_back
    warnings.warn_explicit(
        message,
        UserWarning,
        frame.f_code.co_filename,
        frame.f_lineno,
        module=frame.f_globals.get("__name__"),
        registry=frame.f_globals.setdefault("__warningregistry__", {}),
    )
