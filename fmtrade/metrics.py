"""Forecast and trading metrics, computed by the standard libraries.

Forecast metrics (utilsforecast.losses) over a batch of forecast windows ``[B, H]``:

- ``mae``, ``rmse``, ``mape`` (a fraction, not %) of the point forecast, pooled over
  every window and step. The point forecast is the **median** (the forecast that
  minimises absolute error, as in the Chronos and fev benchmarks).
- ``mase``: each window's MAE divided by the in-sample MAE of the seasonal naive
  forecast on that window's context (seasonality 1 by default: the random-walk
  scale ``mean |y_t - y_{t-1}|``), averaged over windows (the M4 convention).
  Context NaNs are filled forward first.
- ``wql``: weighted quantile loss, ``mean_q [2 * sum_{b,t} QL_q(y, yhat_q) / sum_{b,t} |y|]``
  with the pinball loss ``QL_q = max(q (y - yhat), (q - 1)(y - yhat))``, pooled over
  windows and steps: the definition of GluonTS's mean weighted quantile loss used by
  Chronos (Ansari et al. 2024, sec. 5) and fev; computed by ``utilsforecast``'s
  ``scaled_crps`` over one pooled group.
- ``coverage_50/80/90``: the share of realised values inside the central interval
  formed by the symmetric quantile pair present in the forecast (0.25/0.75,
  0.1/0.9, 0.05/0.95); ``None`` when the pair was not forecast.
- Directional accuracy at one step (default the horizon end, so windows with
  ``stride >= horizon`` are independent draws): a hit when the forecast move
  ``median - last`` and the realised move ``y - last`` have the same sign. Windows
  where either move is exactly zero make no call and are left out (``da_n`` counts
  the calls; a random walk, whose median is the last price, makes none). A Wilson 95%
  interval and a two-sided binomial p-value against 50% come from ``scipy.stats.binomtest``.
- ``wql_rel_rw`` with ``wql_rel_ci_low/high`` (:func:`relative_wql`): a model's WQL over the
  random walk's on the same windows, ``sum_b P_b / sum_b P_b^rw`` with ``P_b`` a window's pinball
  loss summed over steps and levels (the ``sum |y|`` scales cancel), and a 95% percentile
  interval from a moving-block bootstrap over windows (blocks of ``round(N ** (1/3))``
  consecutive windows, which keeps the volatility clustering of neighbouring windows; 2000
  replicates, seeded): a "better than the random walk" claim holds when the interval excludes 1.

Trading metrics (empyrical-reloaded) over a per-bar simple return series, annualised
with ``bars_per_year(interval)`` (24 * 365 for hourly bars in a 24/7 market).

Undefined values (no calls, no drawdown, no downside) are ``None`` so that results
serialise as strict JSON.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import empyrical
import numpy as np
import pandas as pd
from scipy.stats import binomtest
from utilsforecast import losses

from fmtrade.data.intervals import bars_per_year
from fmtrade.errors import InputError
from fmtrade.models.base import Forecast, impute_forward

COVERAGE_LEVELS: tuple[int, ...] = (50, 80, 90)
_MODEL = "model"
#: Relative moves this small are "no move" (far below any tick): float rounding in a
#: forecast that means "unchanged" (e.g. an average of last-price medians) makes no call.
_NO_MOVE = 1e-9


def _finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _check_realised(realised: np.ndarray | Sequence[Sequence[float]], shape: tuple[int, int]) -> np.ndarray:
    arr = np.asarray(realised, dtype=np.float64)
    if arr.shape != shape:
        raise InputError("realised", f"expected shape {shape} (rows x horizon), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise InputError("realised", "contains non-finite values")
    return arr


def _frame(point: np.ndarray, realised: np.ndarray) -> pd.DataFrame:
    """Long format: one row per (window, step); ``window`` ids for per-window metrics and a
    constant ``pool`` id for metrics pooled over every window."""
    rows, horizon = realised.shape
    return pd.DataFrame(
        {
            "window": np.repeat(np.arange(rows), horizon),
            "pool": 0,
            "ds": np.tile(np.arange(horizon), rows),
            "y": realised.ravel(),
            _MODEL: point.ravel(),
        }
    )


def _pooled(frame: pd.DataFrame, loss: str, **kwargs: object) -> float:
    return float(getattr(losses, loss)(frame, id_col="pool", **kwargs)[_MODEL].iloc[0])


def weighted_quantile_loss(
    quantiles: np.ndarray, quantile_levels: Sequence[float], realised: np.ndarray | Sequence[Sequence[float]]
) -> float:
    """WQL of quantile forecasts ``[B, H, Q]`` against ``realised`` ``[B, H]`` (see module doc)."""
    quantiles = np.asarray(quantiles, dtype=np.float64)
    if quantiles.ndim != 3 or quantiles.shape[-1] != len(quantile_levels):
        raise InputError("quantiles", f"expected [B, H, {len(quantile_levels)}], got {quantiles.shape}")
    y = _check_realised(realised, quantiles.shape[:2])
    frame = _frame(quantiles[..., 0], y)
    columns = [f"q{i}" for i in range(len(quantile_levels))]
    for i, col in enumerate(columns):
        frame[col] = quantiles[..., i].ravel()
    return _pooled(frame, "scaled_crps", models={_MODEL: columns}, quantiles=np.asarray(quantile_levels, float))


def pinball_per_row(
    quantiles: np.ndarray, quantile_levels: Sequence[float], realised: np.ndarray | Sequence[Sequence[float]]
) -> np.ndarray:
    """Each row's pinball loss summed over steps and levels ``[B]`` (NaN where its target has a gap):
    the per-window terms of the pooled WQL, which the bootstrap and the online weights need."""
    y = np.asarray(realised, dtype=np.float64)[..., None]
    levels = np.asarray(quantile_levels, dtype=np.float64)
    diff = y - np.asarray(quantiles, dtype=np.float64)
    return np.maximum(levels * diff, (levels - 1.0) * diff).sum(axis=(1, 2))


def wql_per_row(
    quantiles: np.ndarray, quantile_levels: Sequence[float], realised: np.ndarray | Sequence[Sequence[float]]
) -> np.ndarray:
    """Each row's own WQL ``[B]`` (the module's definition on one window; NaN where its target has a gap)."""
    scale = np.abs(np.asarray(realised, dtype=np.float64)).sum(axis=1) * len(quantile_levels)
    return 2.0 * pinball_per_row(quantiles, quantile_levels, realised) / scale


def relative_wql(
    model: np.ndarray, reference: np.ndarray, replicates: int = 2000, seed: int = 0
) -> dict[str, float | None]:
    """WQL ratio of two forecasts of the same windows from their per-window pinball losses ``[N]``
    (:func:`pinball_per_row`), with a 95% moving-block bootstrap interval over windows."""
    a, b = np.asarray(model, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise InputError("model", f"expected two equal non-empty [N] loss vectors, got {a.shape} and {b.shape}")
    if not b.sum() > 0:
        return {"wql_rel_rw": None, "wql_rel_ci_low": None, "wql_rel_ci_high": None}
    n = a.size
    block = max(1, round(n ** (1 / 3)))
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, n - block + 1, size=(replicates, -(-n // block)))
    idx = (starts[..., None] + np.arange(block)).reshape(replicates, -1)[:, :n]
    ratios = a[idx].sum(axis=1) / np.maximum(b[idx].sum(axis=1), np.finfo(float).tiny)
    low, high = np.percentile(ratios, [2.5, 97.5])
    return {"wql_rel_rw": float(a.sum() / b.sum()), "wql_rel_ci_low": float(low), "wql_rel_ci_high": float(high)}


def directional_accuracy(
    predicted_move: np.ndarray, realised_move: np.ndarray, tol: float = 0.0
) -> dict[str, float | int | None]:
    """Share of same-sign moves among calls (both moves beyond ``tol``), Wilson 95% CI, binomial p vs 50%."""
    pred = np.asarray(predicted_move, dtype=np.float64)
    real = np.asarray(realised_move, dtype=np.float64)
    pred = np.where(np.abs(pred) > tol, np.sign(pred), 0.0)
    real = np.where(np.abs(real) > tol, np.sign(real), 0.0)
    calls = (pred != 0) & (real != 0)
    n = int(calls.sum())
    if n == 0:
        return {"directional_accuracy": None, "da_n": 0, "da_ci_low": None, "da_ci_high": None, "da_p_value": None}
    hits = int((pred[calls] == real[calls]).sum())
    test = binomtest(hits, n, 0.5)
    ci = test.proportion_ci(confidence_level=0.95, method="wilson")
    return {
        "directional_accuracy": hits / n,
        "da_n": n,
        "da_ci_low": float(ci.low),
        "da_ci_high": float(ci.high),
        "da_p_value": float(test.pvalue),
    }


def _coverage(frame: pd.DataFrame, quantiles: np.ndarray, levels: Sequence[float], nominal: int) -> float | None:
    lo_level, hi_level = (1 - nominal / 100) / 2, (1 + nominal / 100) / 2
    lo = [i for i, q in enumerate(levels) if math.isclose(q, lo_level, abs_tol=1e-9)]
    hi = [i for i, q in enumerate(levels) if math.isclose(q, hi_level, abs_tol=1e-9)]
    if not (lo and hi):
        return None
    frame[f"{_MODEL}-lo-{nominal}"] = quantiles[..., lo[0]].ravel()
    frame[f"{_MODEL}-hi-{nominal}"] = quantiles[..., hi[0]].ravel()
    return _pooled(frame, "coverage", models=[_MODEL], level=nominal)


def _mase(frame: pd.DataFrame, contexts: Sequence[np.ndarray], seasonality: int) -> float | None:
    if len(contexts) != frame["window"].nunique():
        raise InputError("contexts", f"expected one context per forecast row ({frame['window'].nunique()})")
    histories = []
    for i, ctx in enumerate(contexts):
        y = impute_forward(np.asarray(ctx, dtype=np.float64))
        if y.size <= seasonality:
            raise InputError(f"contexts[{i}]", f"needs more than {seasonality} values for the MASE scale")
        histories.append(y)
    sizes = np.array([y.size for y in histories])
    train = pd.DataFrame(
        {
            "window": np.repeat(np.arange(sizes.size), sizes),
            "ds": np.concatenate([np.arange(-n, 0) for n in sizes]),
            "y": np.concatenate(histories),
        }
    )
    per_window = losses.mase(frame, [_MODEL], seasonality, train, id_col="window")[_MODEL].to_numpy()
    finite = per_window[np.isfinite(per_window)]  # a flat context has no scale
    return float(finite.mean()) if finite.size else None


def forecast_metrics_from_arrays(
    point: np.ndarray,
    quantiles: np.ndarray,
    quantile_levels: Sequence[float],
    last_values: np.ndarray,
    realised: np.ndarray | Sequence[Sequence[float]],
    contexts: Sequence[np.ndarray] | None = None,
    seasonality: int = 1,
    direction_step: int = -1,
) -> dict[str, float | int | None]:
    """All forecast metrics for point ``[B, H]`` and quantile ``[B, H, Q]`` forecasts.

    ``contexts`` (the history each row was forecast from) is needed for MASE; without
    it ``mase`` is ``None``.
    """
    point = np.asarray(point, dtype=np.float64)
    quantiles = np.asarray(quantiles, dtype=np.float64)
    last = np.asarray(last_values, dtype=np.float64)
    if point.ndim != 2:
        raise InputError("point", f"expected [B, H], got {point.shape}")
    y = _check_realised(realised, point.shape)
    if last.shape != (point.shape[0],):
        raise InputError("last_values", f"expected [{point.shape[0]}], got {last.shape}")
    if seasonality < 1:
        raise InputError("seasonality", f"must be >= 1, got {seasonality}")
    frame = _frame(point, y)
    out: dict[str, float | int | None] = {
        "windows": int(point.shape[0]),
        "mae": _pooled(frame, "mae", models=[_MODEL]),
        "rmse": _pooled(frame, "rmse", models=[_MODEL]),
        "mape": _finite_or_none(_pooled(frame, "mape", models=[_MODEL])),
        "mase": _mase(frame, contexts, seasonality) if contexts is not None else None,
        "wql": weighted_quantile_loss(quantiles, quantile_levels, y),
    }
    for nominal in COVERAGE_LEVELS:
        out[f"coverage_{nominal}"] = _coverage(frame, quantiles, quantile_levels, nominal)
    moves = (point[:, direction_step] / last - 1.0, y[:, direction_step] / last - 1.0)
    out.update(directional_accuracy(*moves, tol=_NO_MOVE))
    return out


def forecast_metrics(
    forecast: Forecast,
    realised: np.ndarray | Sequence[Sequence[float]],
    contexts: Sequence[np.ndarray] | None = None,
    seasonality: int = 1,
    direction_step: int = -1,
) -> dict[str, float | int | None]:
    """All forecast metrics of ``forecast`` (median as the point forecast) against ``realised`` ``[B, H]``."""
    return forecast_metrics_from_arrays(
        forecast.median,
        forecast.quantiles,
        forecast.quantile_levels,
        forecast.last_values,
        realised,
        contexts=contexts,
        seasonality=seasonality,
        direction_step=direction_step,
    )


def trading_metrics(returns: np.ndarray | Sequence[float] | pd.Series, interval: str = "60") -> dict[str, float | None]:
    """Risk and return of a per-bar simple return series, annualised for ``interval`` bars."""
    r = np.asarray(returns, dtype=np.float64)
    if r.ndim != 1 or r.size == 0:
        raise InputError("returns", f"expected a non-empty 1-D series, got shape {r.shape}")
    if not np.isfinite(r).all():
        raise InputError("returns", "contains non-finite values")
    ann = bars_per_year(interval)
    values = {
        "total_return": empyrical.cum_returns_final(r),
        "annual_return": empyrical.annual_return(r, annualization=ann),
        "annual_volatility": empyrical.annual_volatility(r, annualization=ann),
        "sharpe": empyrical.sharpe_ratio(r, annualization=ann),
        "sortino": empyrical.sortino_ratio(r, annualization=ann),
        "max_drawdown": empyrical.max_drawdown(r),
        "calmar": empyrical.calmar_ratio(r, annualization=ann),
    }
    return {k: _finite_or_none(v) for k, v in values.items()}
