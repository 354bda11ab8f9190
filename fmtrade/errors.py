"""Typed errors. Anything derived from FmtradeError is a user-facing problem
(bad input, bad config, missing data) that the CLI reports in one line with
exit code 2 and the HTTP API turns into a 4xx, never a traceback."""

from __future__ import annotations


class FmtradeError(Exception):
    """Base of every error fmtrade reports to a user as a clear message."""


class InputError(FmtradeError, ValueError):
    """A value given by the user is invalid; the message names the field and why."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")

    def __reduce__(self) -> tuple[type[InputError], tuple[str, str]]:
        # Rebuild from (field, reason): the default pickling passes the one formatted message,
        # which breaks when Ray ships the error back from a worker.
        return (type(self), (self.field, self.reason))


class ConfigError(FmtradeError):
    """fmtrade.yaml or FMTRADE_* settings failed validation."""


class DataError(FmtradeError):
    """Market data is missing, malformed or inconsistent."""
