"""Progress bars only where they help: long work, on a terminal, or when asked.

Every bar of the package goes through `progress_bar`, with the same meaning of `progress`:
True shows it (asked for, even in a log or a notebook), False hides it, None (the default) shows
it only when the work is long and stderr is a terminal, so that logs, CI output and notebooks
stay free of bars and escape codes unless the caller wants them.
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm


def wanted(progress: bool | None, long: bool = True) -> bool:
    """Whether to draw a bar: `progress` if given, else long work on a terminal."""
    if progress is not None:
        return bool(progress)
    return long and _stderr_is_terminal()


def _stderr_is_terminal() -> bool:
    stream = sys.stderr
    return stream is not None and hasattr(stream, "isatty") and stream.isatty()


def progress_bar(iterable: Any = None, *, progress: bool | None, long: bool = True, **kwargs: Any) -> tqdm:
    """`tqdm(iterable, **kwargs)`, disabled unless `wanted(progress, long)`."""
    return tqdm(iterable, disable=not wanted(progress, long), **kwargs)
