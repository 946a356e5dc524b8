"""The one exception type the CLIs turn into a clear message and exit code 2."""


class UsageError(Exception):
    """Bad input from the user (config, path, device, checkpoint): the message names it and the fix."""
