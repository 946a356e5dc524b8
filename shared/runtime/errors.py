"""The one exception type the CLIs turn into a clear message and exit code 2."""


class UsageError(Exception):
    """Bad input from the user (config, path, device, checkpoint): the message names it and the fix."""


class RunAborted(Exception):
    """A run that cannot go on (disk full, NaN loss): the message says what happened and what to do."""


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message is the reason, for one log line."""
