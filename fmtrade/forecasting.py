"""One forecast document for one series: every model, the ensemble, what failed.

:func:`forecast_document` is the one builder of the document that ``fmtrade forecast --json``
prints and the HTTP API answers (its shape: :class:`fmtrade.schemas.ForecastResponse`); the
CLI calls it through :func:`forecast_symbol`, the service with the members' call facts.

Models are loaded from the registry; one that fails to load or to forecast is
reported under ``failed`` and left out of the ensemble, which fails only when no
model answered.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from fmtrade.config import Settings
from fmtrade.data.intervals import interval_offset
from fmtrade.data.store import iso
from fmtrade.ensemble import ENSEMBLE_NAME, Ensemble, EnsembleError, EnsembleResult
from fmtrade.errors import FmtradeError, InputError
from fmtrade.live_state import LiveState, apply_live_state
from fmtrade.models.base import Forecast, Forecaster
from fmtrade.models.registry import ModelSpec, build_forecaster

log = logging.getLogger(__name__)

RANDOM_WALK = "random-walk"


@dataclass(frozen=True)
class MemberCalls:
    """How the service called each member: the LoRA adapter, its wait (ms), the series in the
    batched call. Left empty in-process: base models, one call with every row, not timed."""

    adapters: dict[str, str | None] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    batch_rows: dict[str, int] = field(default_factory=dict)


def load_models(specs: Sequence[ModelSpec], settings: Settings) -> tuple[dict[str, Forecaster], dict[str, str]]:
    """Build each model once; a model that cannot load is reported, not fatal."""
    models: dict[str, Forecaster] = {}
    failed: dict[str, str] = {}
    for spec in specs:
        try:
            models[spec.name] = build_forecaster(spec, settings)
        except FmtradeError as exc:
            failed[spec.name] = str(exc)
            log.warning("model %s unavailable: %s", spec.name, exc)
    return models, failed


def future_timestamps(last: pd.Timestamp, interval: str, horizon: int) -> list[str]:
    """Open times of the ``horizon`` bars after ``last``."""
    step = interval_offset(interval)
    return [iso(last + step * (k + 1)) for k in range(horizon)]


def quantile_dict(forecast: Forecast, row: int = 0) -> dict[str, list[float]]:
    return {f"{q:g}": forecast.quantiles[row, :, i].tolist() for i, q in enumerate(forecast.quantile_levels)}


def forecast_document(
    result: EnsembleResult,
    row: int,
    *,
    symbol: str | None,
    timestamps: list[str] | None,
    elapsed_ms: float,
    calls: MemberCalls | None = None,
) -> dict[str, Any]:
    """Row ``row`` of an ensemble result as the forecast document (``timestamps`` None for an
    explicit context, ``elapsed_ms`` the time spent forecasting)."""
    calls = calls or MemberCalls()
    combined = result.ensemble
    rows, horizon = combined.mean.shape
    return {
        "symbol": symbol,
        "horizon": int(horizon),
        "timestamps": timestamps,
        "last_value": float(combined.last_values[row]),
        "models": {
            name: {
                "mean": fc.mean[row].tolist(),
                "quantiles": quantile_dict(fc, row),
                "adapter": calls.adapters.get(name),
                "latency_ms": calls.latency_ms.get(name),
                "batch_size": calls.batch_rows.get(name, rows),
            }
            for name, fc in result.members.items()
        },
        ENSEMBLE_NAME: {
            "mean": combined.mean[row].tolist(),
            "quantiles": quantile_dict(combined, row),
            "disagreement": combined.extras["disagreement"][row].tolist(),
        },
        "weights": result.weights,
        "failed": result.failed,
        "latency_ms": elapsed_ms,
        "calibration": result.calibration,
    }


def forecast_symbol(
    symbol: str,
    closes: pd.Series,
    models: Mapping[str, Forecaster],
    weights: Mapping[str, float],
    interval: str,
    horizon: int,
    quantile_levels: Sequence[float],
    context: int,
    failed: Mapping[str, str] | None = None,
    time_budget_s: float | None = None,
    state: LiveState | None = None,
) -> dict[str, Any]:
    """Forecast the ``horizon`` bars after the last close of ``closes`` with every model and
    their weighted ensemble, in this process; ``failed`` carries models that could not even be loaded.
    With a live ``state`` holding ``symbol`` the members are recalibrated and weighted as it learned."""
    if context < 2:
        raise InputError("context", f"must be at least 2 bars, got {context}")
    if not models:
        raise EnsembleError(failed or {})
    window = closes.iloc[-context:].to_numpy(dtype=np.float64)
    ensemble = Ensemble(models, {name: weights.get(name, 1.0) for name in models}, time_budget_s=time_budget_s)
    start = time.perf_counter()
    result = ensemble.forecast([window], horizon, quantile_levels)
    elapsed_ms = (time.perf_counter() - start) * 1000.0
    result = replace(result, failed={**(failed or {}), **result.failed})
    result = apply_live_state(state, symbol, result, weights, at=closes.index[-1])
    stamps = future_timestamps(closes.index[-1], interval, horizon)
    return forecast_document(result, 0, symbol=symbol, timestamps=stamps, elapsed_ms=elapsed_ms)
