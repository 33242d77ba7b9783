"""Print the README's set-up or test commands, as written there, for .ci/run to execute.

`python .ci/readme_commands.py setup` prints the bash block under `<!-- .ci/run runs this block ... -->`,
`... test` the one under `<!-- .ci/run: test -->`; each command on its own line, comments dropped.
A README without the marked block fails here, so CI never runs commands the README does not show.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
MARKERS = {"setup": "<!-- .ci/run runs this block", "test": "<!-- .ci/run: test -->"}


def commands(which: str, text: str | None = None) -> list[str]:
    text = README.read_text() if text is None else text
    marker = MARKERS[which]
    if marker not in text:
        raise SystemExit(f"README.md has no block marked {marker!r} for .ci/run")
    block = re.search(r"```bash\n(.*?)```", text.split(marker, 1)[1], flags=re.DOTALL)
    if block is None:
        raise SystemExit(f"README.md: no ```bash block after {marker!r}")
    lines = [line.split("  #", 1)[0].strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


if __name__ == "__main__":
    print("\n".join(commands(sys.argv[1])))
