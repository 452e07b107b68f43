"""Errors that are the user's to fix: the CLI prints them as one line and exits non-zero."""


class R1kitError(Exception):
    """Base of user-facing errors (bad recipe, bad data); never a bug in r1kit."""


class ConfigError(R1kitError):
    """A recipe key is unknown, mistyped or out of range."""


class DataError(R1kitError):
    """A data file is missing or one of its rows is malformed."""
