"""What the deployments hand each other through Serve handles.

Plain dataclasses of numpy arrays: they pickle compactly (no JSON round trip of
long contexts between replicas) and carry exactly what the next hop needs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from fmtrade.ensemble import EnsembleResult
from fmtrade.errors import InputError
from fmtrade.forecasting import MemberCalls
from fmtrade.models.base import Forecast


@dataclass(frozen=True)
class ModelRequest:
    """A batch of validated contexts for one model (one HTTP request's series)."""

    contexts: list[np.ndarray]
    horizon: int
    quantile_levels: tuple[float, ...]

    @property
    def rows(self) -> int:
        return len(self.contexts)

    def pieces(self, size: int) -> list[ModelRequest]:
        """This request cut into requests of at most ``size`` series, in order."""
        if self.rows <= size:
            return [self]
        return [
            ModelRequest(self.contexts[i : i + size], self.horizon, self.quantile_levels)
            for i in range(0, self.rows, size)
        ]


@dataclass(frozen=True)
class ModelResult:
    """One model's answer, with the LoRA adapter that produced it (None: the base model)."""

    forecast: Forecast
    adapter: str | None
    compute_ms: float  # the batched model call this request rode in
    batch_rows: int  # series in that call (>= this request's rows when batching merged requests)


@dataclass(frozen=True)
class EnsembleRequest:
    contexts: list[np.ndarray]
    horizon: int
    quantile_levels: tuple[float, ...]
    models: tuple[str, ...]
    symbol: str | None = None  # selects per-symbol adapters


@dataclass(frozen=True)
class ServedResult(EnsembleResult):
    """The ensemble's answer plus how each member was called (adapter, wait, batch)."""

    calls: MemberCalls = field(default_factory=MemberCalls)


class MembersFailed(Exception):
    """No member answered: the API maps this to 503 with every reason (or 422 when every
    member rejected the input itself)."""

    def __init__(self, failed: dict[str, str], input_errors: dict[str, tuple[str, str]]) -> None:
        self.failed = failed
        self.input_errors = input_errors  # name -> (field, reason) for members that raised InputError
        super().__init__("no model answered: " + "; ".join(f"{k}: {v}" for k, v in failed.items()))

    def __reduce__(self):  # keep both fields across Ray's pickling of exceptions
        return (MembersFailed, (self.failed, self.input_errors))


def unwrap(exc: BaseException) -> BaseException:
    """Ray re-raises a replica's exception as a ``RayTaskError`` subclass of the original type
    that lacks the original's attributes; the original travels as ``cause``."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def context_row(field_name: str) -> tuple[int, str] | None:
    """``(k, rest)`` for a model's ``contexts[k]...`` field name, else None."""
    match = re.fullmatch(r"contexts\[(\d+)\](.*)", field_name)
    return (int(match.group(1)), match.group(2)) if match else None


def shift_rows(exc: Exception, offset: int) -> Exception:
    """A piece's input error renumbered to the rows of the request it was cut from."""
    if not isinstance(exc, InputError) or not offset:
        return exc
    row = context_row(exc.field)
    if row is None:
        return exc
    return InputError(f"contexts[{row[0] + offset}]{row[1]}", exc.reason)
