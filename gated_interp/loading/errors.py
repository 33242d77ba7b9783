"""The exception and warning types of loading and saving."""


class CheckpointError(ValueError):
    """A checkpoint (or the name of one) cannot be used; the message says why and what to do."""


class ReleaseNotAvailable(CheckpointError):
    """A released (1B) variant is neither on this machine nor reachable on the hub.

    `variant` and `subfolder` say which; `reason` is the hub client's answer. The message names
    both ways out: download the release, or use the bundled tiny model (`cli_message` says the
    same in terms of the command line's flags)."""

    def __init__(self, variant: str, subfolder: str, reason: str, download: str, env: str):
        self.variant, self.subfolder, self.reason, self.download, self.env = variant, subfolder, reason, download, env
        super().__init__(
            f"the released 1B {variant} model is not on this machine and could not be fetched from the "
            f"Hugging Face hub ({reason}). Either download it once: `{download}`, then set {env}=DIR (or "
            f"pass DIR/{subfolder} to load_hooked); or use the bundled tiny model: "
            f'load_hooked({variant!r}, size="tiny")'
        )

    def cli_message(self) -> str:
        return (
            f"the released 1B {self.variant} model is not on this machine and could not be fetched from the "
            f"Hugging Face hub ({self.reason}). Either download it once: `{self.download}`, then set "
            f"{self.env}=DIR (or give DIR/{self.subfolder} as the variant); or run with --size tiny to use "
            "the bundled tiny models"
        )


class NonFiniteWeightsWarning(UserWarning):
    """A loaded checkpoint holds NaN or Inf weights (named in the message)."""
