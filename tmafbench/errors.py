"""Errors that the CLI reports as one clear line, without a traceback.

Only these are a user's errors. Any other exception that reaches the command line is a bug in
tmafbench: the CLI says so in one line and `tmafbench --debug ...` shows its traceback.

This module imports nothing (core.py raises InputError too).
"""


class TmafbenchError(Exception):
    """Base class for user-facing errors (bad input, missing data, conflicting studies)."""


class InputError(TmafbenchError, ValueError):
    """A value the user gave is refused: an unknown name, a parameter of the wrong type or range,
    an option out of bounds. (A ValueError too, for callers that catch that.)"""


class DataNotFoundError(TmafbenchError, FileNotFoundError):
    """A data set is neither on disk nor downloadable."""


class SpecError(InputError):
    """A study file is malformed; the message names the key path."""
