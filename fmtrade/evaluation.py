"""Zero-shot walk-forward evaluation: how well each model forecasts bars it never saw.

For one symbol's close series (regular bar grid, gaps as NaN), forecast origins are
placed every ``stride`` bars. A window's context is the ``context`` bars *before*
its origin and its target the ``horizon`` bars from the origin on, so a forecast
never sees the values it is scored on. Windows whose target contains a gap are
skipped (there is nothing to score against); gaps inside a context are handled by
the models. With ``start``/``end`` only windows whose whole target lies inside
[start, end] are scored; their contexts may reach back before ``start``, and up to
``warmup`` earlier windows on the same stride grid are forecast but not scored: they
give conformal calibration and the online ensemble weights a record before the first
scored window.

All windows of a symbol go to each model in ONE batched call (models chunk to
their ``max_batch_size``); :meth:`fmtrade.walkforward.WalkForward.apply` recalibrates
the flagged models and builds the online-weighted ensemble (each window from errors
realised strictly before its origin); :func:`fmtrade.metrics.forecast_metrics` scores
every model, the ensemble and the random walk on the same windows, and
:func:`fmtrade.metrics.relative_wql` gives each one's WQL over the random walk's with a
block-bootstrap 95% interval.

:func:`evaluate_symbol` is a pure function of (series, forecasters, params, walk), so a
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

from fmtrade.calibration import Outcomes
from fmtrade.ensemble import ANCHOR, ENSEMBLE_NAME
from fmtrade.errors import InputError
from fmtrade.metrics import forecast_metrics, pinball_per_row, relative_wql
from fmtrade.models.base import Forecast, Forecaster, check_quantile_levels
from fmtrade.walkforward import WalkForward

log = logging.getLogger(__name__)

#: Levels every model is asked for: 0.05..0.95 covers the 90% interval, 0.1/0.9 the 80%
#: one; WQL averages over all of them.
EVAL_QUANTILES: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)

ROW_KEYS: tuple[str, ...] = (
    "symbol", "model", "calibrated", "windows", "mae", "rmse", "mape", "mase", "wql",
    "wql_rel_rw", "wql_rel_ci_low", "wql_rel_ci_high",
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
    warmup: int = 0  # windows before ``start`` forecast only to give calibration and weights a record

    def __post_init__(self) -> None:
        bounds = (
            ("context", self.context, 2), ("horizon", self.horizon, 1), ("stride", self.stride, 1),
            ("warmup", self.warmup, 0),
        )  # fmt: skip
        for field, value, low in bounds:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise InputError(field, f"must be an integer >= {low}, got {value!r}")
        if self.start is not None and self.end is not None and self.start > self.end:
            raise InputError("start", f"{self.start} is after end {self.end}")
        object.__setattr__(self, "quantile_levels", check_quantile_levels(self.quantile_levels))


@dataclass(frozen=True)
class Windows:
    """Contexts ``[N, context]``, targets ``[N, horizon]``, each window's origin time and bar position,
    and which windows are scored (the others are warm-up)."""

    contexts: np.ndarray
    targets: np.ndarray
    origins: pd.DatetimeIndex
    positions: np.ndarray
    scored: np.ndarray

    def __len__(self) -> int:
        return int(self.targets.shape[0])


def cut_windows(series: pd.Series, params: EvalParams, symbol: str = "series", min_finite: int = 2) -> Windows:
    """Walk-forward windows of ``series`` (no look-ahead: each context ends before its target starts);
    windows with a gap in the target or fewer than ``min_finite`` observed context bars are skipped."""
    values = series.to_numpy(dtype=np.float64)
    index = pd.DatetimeIndex(series.index)
    first = scored_from = params.context
    if params.start is not None:
        scored_from = max(first, int(index.searchsorted(params.start, side="left")))
        first = scored_from - params.stride * min(params.warmup, (scored_from - first) // params.stride)
    last_end = len(values) if params.end is None else int(index.searchsorted(params.end, side="right"))
    origins = np.arange(first, last_end - params.horizon + 1, params.stride)
    if not (origins >= scored_from).any():
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
    if not (scorable & (origins >= scored_from)).any():
        raise InputError("symbol", f"{symbol}: every window's target contains missing bars")
    if (~scorable).any():
        log.info("%s: skipped %d of %d windows with missing bars", symbol, int((~scorable).sum()), origins.size)
    kept = origins[scorable]
    return Windows(contexts[scorable], targets[scorable], index[kept], kept, kept >= scored_from)


def check_horizon(forecasters: Mapping[str, Forecaster], horizon: int) -> None:
    """Fail before any work when a model cannot forecast that far."""
    too_far = {name: m.max_horizon for name, m in forecasters.items() if horizon > m.max_horizon}
    if too_far:
        detail = ", ".join(f"{name} (max {limit})" for name, limit in too_far.items())
        raise InputError("horizon", f"{horizon} exceeds the horizon of {detail}")


def forecast_windows(
    symbol: str, windows: Windows, forecasters: Mapping[str, Forecaster], params: EvalParams
) -> dict[str, Forecast | str]:
    """Each model's forecast of every window in one batched call (seeded per window), or why it failed."""
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
    return results


def walk_forward(
    symbol: str, series: pd.Series, forecasters: Mapping[str, Forecaster], params: EvalParams, walk: WalkForward
) -> tuple[Windows, dict[str, Forecast | str]]:
    """The windows of ``series`` and every model's forecasts of them as scored (recalibrated when
    flagged), plus the ensemble; a failed model maps to why."""
    check_horizon(forecasters, params.horizon)
    min_finite = max(m.min_context for m in forecasters.values())
    windows = cut_windows(series, params, symbol, min_finite)
    raw = forecast_windows(symbol, windows, forecasters, params)
    answered = {name: fc for name, fc in raw.items() if isinstance(fc, Forecast)}
    outcomes = Outcomes.on_grid(windows.positions, params.horizon, windows.targets)
    processed = walk.apply(answered, outcomes) if answered else {}
    return windows, {**raw, **processed}


def evaluate_symbol(
    symbol: str,
    series: pd.Series,
    forecasters: Mapping[str, Forecaster],
    params: EvalParams,
    walk: WalkForward | None = None,
) -> list[dict[str, Any]]:
    """Rows of metrics (:data:`ROW_KEYS`), one per model plus ``ensemble``, over the scored windows.

    ``walk`` says which models are recalibrated and which are the ensemble's members (a model
    scored only as a reference is left out of it); None: no calibration, every model a member.
    A model that raises gets a row with ``windows: 0``, ``None`` metrics and an ``error``.
    """
    if not forecasters:
        raise InputError("models", "no models to evaluate")
    walk = walk if walk is not None else WalkForward(ensemble=dict.fromkeys(forecasters, 1.0))
    windows, results = walk_forward(symbol, series, forecasters, params, walk)
    scored = np.flatnonzero(windows.scored)
    targets = windows.targets[scored]
    contexts = list(windows.contexts[scored])
    reference = results.get(ANCHOR)
    anchor = (
        pinball_per_row(reference.quantiles[scored], reference.quantile_levels, targets)
        if isinstance(reference, Forecast) else None
    )  # fmt: skip
    out = []
    for name, fc in results.items():
        calibrated = name in walk.calibrated or (name == ENSEMBLE_NAME and walk.calibrate_ensemble)
        head = {"symbol": symbol, "model": name, "calibrated": calibrated}
        if isinstance(fc, str):
            out.append({**head, **dict.fromkeys(ROW_KEYS[3:]), "windows": 0, "error": fc})
            continue
        fc = fc.take(scored)
        metrics = forecast_metrics(fc, targets, contexts=contexts, seasonality=params.seasonality)
        if anchor is not None:
            metrics.update(relative_wql(pinball_per_row(fc.quantiles, fc.quantile_levels, targets), anchor))
        out.append({**head, **{k: metrics.get(k) for k in ROW_KEYS[3:]}})
    return out
