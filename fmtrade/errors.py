"""Typed errors. Anything derived from FmtradeError is a user-facing problem
(bad input, bad config, missing data) that the CLI reports in one line with
exit code 2 and the HTTP API turns into a 4xx, never a traceback."""

from __future__ import annotations

import copyreg
from typing import Any


def first_line(exc: BaseException) -> str:
    """An error's first non-blank line (its type's name if it has none): the part of a library's
    multi-line error worth one line of a user-facing message."""
    return next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


class FmtradeError(Exception):
    """Base of every error fmtrade reports to a user as a clear message."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Ray ships a worker's error to the driver by pickling it. Exception's own pickling calls
        # ``type(self)(*self.args)``, which fails for every subclass whose constructor takes other
        # arguments than its message (InputError(field, reason), BybitError(ret_code, ...)). Rebuild
        # without the constructor instead: the same args (so the same message) and the attributes
        # the constructor set, for this class and every subclass.
        newobj = copyreg.__newobj__  # type: ignore[attr-defined]  # typeshed's copyreg stub omits __newobj__
        return newobj, (type(self), *self.args), self.__dict__ or None


class InputError(FmtradeError, ValueError):
    """A value given by the user is invalid; the message names the field and why."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


class ConfigError(FmtradeError):
    """fmtrade.yaml or FMTRADE_* settings failed validation."""


class DataError(FmtradeError):
    """Market data is missing, malformed or inconsistent."""
