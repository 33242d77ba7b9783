"""Maintainer commands, kept out of the installed package (`pyproject.toml` installs only
`gated_interp*`): run them from a clone's root.

    python -m maintainer.model_card --help      # measure trained runs and write the bundled models' card
"""
