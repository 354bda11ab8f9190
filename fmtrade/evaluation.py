"""Zero-shot walk-forward evaluation: how well each model forecasts bars it never saw.

For one symbol's close series (regular bar grid, gaps as NaN), forecast origins are
placed every ``stride`` bars. A window's context is the ``context`` bars *before*
its origin and its target the ``horizon`` bars from the origin on, so a forecast
never sees the values it is scored on. Windows whose target contains a gap are
skipped (there is nothing to score against); gaps inside a context are handled by
the models. With ``start``/``end`` only windows whose whole target lies inside
[start, end] are scored; their contexts may reach back before ``start``.

All windows of a symbol go to each model in ONE batched call (models chunk to
their ``max_batch_size``), the ensemble combines the member forecasts with the
registry weights, and :func:`fmtrade.metrics.forecast_metrics` scores every model,
the ensemble and the random walk on the same windows.

:func:`evaluate_symbol` is a pure function of (series, forecasters, params), so a
Ray job can evaluate assets in parallel by calling it per symbol.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from fmtrade.ensemble import ENSEMBLE_NAME, combine
from fmtrade.errors import InputError
from fmtrade.metrics import forecast_metrics
from fmtrade.models.base import Forecast, Forecaster, check_quantile_levels

log = logging.getLogger(__name__)

#: Levels every model is asked for: 0.05..0.95 covers the 90% interval, 0.1/0.9 the 80%
#: one; WQL averages over all of them.
EVAL_QUANTILES: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)

ROW_KEYS: tuple[str, ...] = (
    "symbol", "model", "windows", "mae", "rmse", "mape", "mase", "wql",
    "coverage_80", "coverage_90", "directional_accuracy", "da_ci_low", "da_ci_high",
)  # fmt: skip


@dataclass(frozen=True)
class EvalParams:
    """Window geometry and scoring choices of one evaluation."""

    context: int = 512
    horizon: int = 24
    stride: int = 24
    start: pd.Timestamp | None = None
    end: pd.Timestamp | None = None
    quantile_levels: tuple[float, ...] = EVAL_QUANTILES
    seasonality: int = 1  # MASE scale: the random walk's in-sample error

    def __post_init__(self) -> None:
        bounds = (("context", self.context, 2), ("horizon", self.horizon, 1), ("stride", self.stride, 1))
        for field, value, low in bounds:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise InputError(field, f"must be an integer >= {low}, got {value!r}")
        if self.start is not None and self.end is not None and self.start > self.end:
            raise InputError("start", f"{self.start} is after end {self.end}")
        object.__setattr__(self, "quantile_levels", check_quantile_levels(self.quantile_levels))


@dataclass(frozen=True)
class Windows:
    """Contexts ``[N, context]``, targets ``[N, horizon]`` and each window's origin time."""

    contexts: np.ndarray
    targets: np.ndarray
    origins: pd.DatetimeIndex

    def __len__(self) -> int:
        return int(self.targets.shape[0])


def cut_windows(series: pd.Series, params: EvalParams, symbol: str = "series", min_finite: int = 2) -> Windows:
    """Walk-forward windows of ``series`` (no look-ahead: each context ends before its target starts);
    windows with a gap in the target or fewer than ``min_finite`` observed context bars are skipped."""
    values = series.to_numpy(dtype=np.float64)
    index = pd.DatetimeIndex(series.index)
    first = params.context
    if params.start is not None:
        first = max(first, int(index.searchsorted(params.start, side="left")))
    last_end = len(values) if params.end is None else int(index.searchsorted(params.end, side="right"))
    origins = np.arange(first, last_end - params.horizon + 1, params.stride)
    if origins.size == 0:
        period = "" if params.start is None and params.end is None else f" in [{params.start}, {params.end}]"
        raise InputError(
            "context",
            f"{symbol}: {len(values)} bars cannot hold a context of {params.context} plus a horizon of "
            f"{params.horizon}{period}",
        )
    ctx_idx = origins[:, None] + np.arange(-params.context, 0)[None, :]
    tgt_idx = origins[:, None] + np.arange(params.horizon)[None, :]
    contexts, targets = values[ctx_idx], values[tgt_idx]
    scorable = np.isfinite(targets).all(axis=1) & (np.isfinite(contexts).sum(axis=1) >= min_finite)
    if not scorable.any():
        raise InputError("symbol", f"{symbol}: every window's target contains missing bars")
    if (~scorable).any():
        log.info("%s: skipped %d of %d windows with missing bars", symbol, int((~scorable).sum()), origins.size)
    return Windows(contexts[scorable], targets[scorable], index[origins[scorable]])


def check_horizon(forecasters: Mapping[str, Forecaster], horizon: int) -> None:
    """Fail before any work when a model cannot forecast that far."""
    too_far = {name: m.max_horizon for name, m in forecasters.items() if horizon > m.max_horizon}
    if too_far:
        detail = ", ".join(f"{name} (max {limit})" for name, limit in too_far.items())
        raise InputError("horizon", f"{horizon} exceeds the horizon of {detail}")


def _row(symbol: str, model: str, metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {"symbol": symbol, "model": model, **{k: metrics.get(k) for k in ROW_KEYS[2:]}}


def evaluate_symbol(
    symbol: str,
    series: pd.Series,
    forecasters: Mapping[str, Forecaster],
    params: EvalParams,
    weights: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Rows of metrics (:data:`ROW_KEYS`), one per model that answered plus ``ensemble``.

    Each model forecasts every window of ``series`` in one batched call (seeded per
    window, so sampling models are reproducible). A model that raises gets a row with
    ``windows: 0``, ``None`` metrics and an ``error``; the ensemble combines the rest
    with ``weights``: the models named there are the ensemble's members (a model scored only
    as a reference, like an added random walk, is left out of it); ``None``: all, equally.
    """
    if not forecasters:
        raise InputError("models", "no models to evaluate")
    check_horizon(forecasters, params.horizon)
    min_finite = max(m.min_context for m in forecasters.values())
    windows = cut_windows(series, params, symbol, min_finite)
    contexts = list(windows.contexts)
    seeds = list(range(len(windows)))
    results: dict[str, Forecast | str] = {}
    for name, model in forecasters.items():
        began = time.perf_counter()
        try:
            results[name] = model.forecast(contexts, params.horizon, params.quantile_levels, seeds=seeds)
            log.info("%s: %s forecast %d windows in %.1fs", symbol, name, len(windows), time.perf_counter() - began)
        except Exception as exc:  # noqa: BLE001 - one broken model must not hide the others' results
            results[name] = f"{type(exc).__name__}: {exc}"
            log.warning("%s: %s failed: %s", symbol, name, results[name])
    members = {
        name: fc for name, fc in results.items() if isinstance(fc, Forecast) and (weights is None or name in weights)
    }
    if members:
        results[ENSEMBLE_NAME] = combine(members, None if weights is None else {n: weights[n] for n in members})
    rows = []
    for name, fc in results.items():
        if isinstance(fc, str):
            rows.append({**_row(symbol, name, {"windows": 0}), "error": fc})
        else:
            metrics = forecast_metrics(fc, windows.targets, contexts=contexts, seasonality=params.seasonality)
            rows.append(_row(symbol, name, metrics))
    return rows
