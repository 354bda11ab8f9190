"""One forecast document for one symbol: every model, the ensemble, what failed.

The CLI (``fmtrade forecast --json``) and the HTTP API return the same document::

    {"symbol", "horizon", "timestamps": [ISO...],
     "models": {NAME: {"mean": [...], "quantiles": {"0.1": [...], ...}}},
     "ensemble": {"mean", "quantiles", "disagreement"},
     "weights": {NAME: w}, "failed": {NAME: reason}}

Models are loaded from the registry; one that fails to load or to forecast is
reported under ``failed`` and left out of the ensemble, which fails only when no
model answered.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from fmtrade.config import Settings
from fmtrade.data.intervals import interval_offset
from fmtrade.data.store import iso
from fmtrade.ensemble import ENSEMBLE_NAME, Ensemble, EnsembleError
from fmtrade.errors import FmtradeError, InputError
from fmtrade.models.base import Forecast, Forecaster
from fmtrade.models.registry import ModelSpec, build_forecaster

log = logging.getLogger(__name__)

RANDOM_WALK = "random-walk"


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
) -> dict[str, Any]:
    """Forecast the ``horizon`` bars after the last close of ``closes`` with every model and
    their weighted ensemble; ``failed`` carries models that could not even be loaded."""
    if context < 2:
        raise InputError("context", f"must be at least 2 bars, got {context}")
    if not models:
        raise EnsembleError(failed or {})
    window = closes.iloc[-context:].to_numpy(dtype=np.float64)
    ensemble = Ensemble(models, {name: weights.get(name, 1.0) for name in models}, time_budget_s=time_budget_s)
    result = ensemble.forecast([window], horizon, quantile_levels)
    combined = result.ensemble
    return {
        "symbol": symbol,
        "horizon": horizon,
        "timestamps": future_timestamps(closes.index[-1], interval, horizon),
        "models": {
            name: {"mean": fc.mean[0].tolist(), "quantiles": quantile_dict(fc)} for name, fc in result.members.items()
        },
        ENSEMBLE_NAME: {
            "mean": combined.mean[0].tolist(),
            "quantiles": quantile_dict(combined),
            "disagreement": combined.extras["disagreement"][0].tolist(),
        },
        "weights": result.weights,
        "failed": {**(failed or {}), **result.failed},
    }
