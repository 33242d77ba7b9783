"""`python -m gated_interp`: the `gated-interp` command line."""

import sys

from gated_interp.cli import main

if __name__ == "__main__":
    sys.exit(main())
