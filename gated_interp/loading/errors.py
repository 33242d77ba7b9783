"""The one exception type that loading and saving raise for bad checkpoints or arguments."""


class CheckpointError(ValueError):
    """A checkpoint (or the name of one) cannot be used; the message says why and what to do."""
