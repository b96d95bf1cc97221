"""The failures of a training run that the training script reports as one line, with exit code 2."""


class TrainingError(RuntimeError):
    """A run stopped for a reason that one line explains (divergence, a full disk): the script prints it alone."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from (corrupt, truncated, incomplete); the message names the bad file."""
