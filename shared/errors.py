"""The exception types whose message is meant for the user: each names the problem and the fix, and the
CLIs print it as one line (shared/runtime/cli.py) instead of a traceback."""


class UsageError(Exception):
    """Bad input from the user (config, path, device, checkpoint): exit code 2."""


class ConfigError(UsageError):
    """A config file, override or task that cannot be used as it is: exit code 2."""


class RunAborted(Exception):
    """A run that cannot go on (disk full, NaN loss): the message says what happened and what to do; exit 1."""


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message is the reason, for one log line (the daemon goes on)."""
