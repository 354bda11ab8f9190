"""Each ensemble member's forecast of one decision, kept so its realised outcome can score the member.

The forecast document (in-process or served) holds every member's quantiles per step; the agent
journals them with the decision (:meth:`fmtrade.agent.journal.Journal.record_decision`). Once the
horizon has passed, :meth:`MemberForecast.loss` scores a member on the realised closes with the same
loss the walk-forward's online weights are fed (:func:`fmtrade.metrics.weighted_quantile_loss`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from fmtrade.data.intervals import interval_offset
from fmtrade.errors import InputError
from fmtrade.metrics import weighted_quantile_loss


@dataclass(frozen=True)
class MemberForecast:
    """One member's quantiles ``[H, Q]`` at ``levels`` for the bars opening at ``steps`` (UTC)."""

    levels: tuple[float, ...]
    steps: tuple[pd.Timestamp, ...]
    quantiles: np.ndarray

    def realised(self, closes: pd.Series) -> np.ndarray | None:
        """The closes of ``steps`` from ``closes`` (indexed by open time); None while any is unknown."""
        path = closes.reindex(pd.DatetimeIndex(self.steps))
        return None if path.isna().any() else path.to_numpy(dtype=np.float64)

    def loss(self, realised: np.ndarray) -> float:
        return weighted_quantile_loss(self.quantiles[None], self.levels, realised[None])


def member_forecasts(doc: Mapping[str, Any], last_bar: pd.Timestamp, interval: str) -> dict[str, MemberForecast]:
    """Each member of a forecast document of the bars after ``last_bar`` (the context's last open time)."""
    bar = interval_offset(interval)
    out = {}
    try:
        for name, member in doc["models"].items():
            levels = sorted(member["quantiles"], key=float)
            quantiles = np.column_stack([member["quantiles"][q] for q in levels]).astype(np.float64)
            steps = tuple(last_bar + bar * (k + 1) for k in range(quantiles.shape[0]))
            out[name] = MemberForecast(tuple(float(q) for q in levels), steps, quantiles)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InputError("forecast", f"no member quantiles in the document ({type(exc).__name__}: {exc})") from None
    return out
