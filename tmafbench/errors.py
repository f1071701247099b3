"""Errors that the CLI reports as one clear line, without a traceback."""


class TmafbenchError(Exception):
    """Base class for user-facing errors (bad input, missing data, conflicting studies)."""


class DataNotFoundError(TmafbenchError, FileNotFoundError):
    """A data set is neither on disk nor downloadable."""


class SpecError(TmafbenchError, ValueError):
    """A study file is malformed; the message names the key path."""
