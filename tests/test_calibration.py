"""Conformal recalibration: the rule by hand, nominal coverage on held-out rows, and no look-ahead
(perturbing the bars at and after a time leaves every calibrated forecast made up to it unchanged)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from fmtrade.calibration import Conformal, Outcomes, mirrored_pairs
from fmtrade.errors import InputError
from fmtrade.evaluation import EvalParams, walk_forward
from fmtrade.metrics import forecast_metrics
from fmtrade.models.base import Forecast
from fmtrade.models.baselines import NaiveForecaster, RandomWalkForecaster
from fmtrade.walkforward import WalkForward

LEVELS = (0.05, 0.1, 0.5, 0.9, 0.95)


def _normal_forecasts(rows: int, sigma: float, horizon: int = 4, seed: int = 0) -> tuple[Forecast, np.ndarray]:
    """Forecasts of N(last, sigma * last) when the truth is N(last, 1%): ``sigma`` != 1% is miscalibrated."""
    rng = np.random.default_rng(seed)
    last = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, rows)))
    z = norm.ppf(LEVELS)
    quantiles = last[:, None, None] * (1 + sigma * z)[None, None, :] * np.ones((1, horizon, 1))
    realised = last[:, None] * (1 + rng.normal(0, 0.01, (rows, horizon)))
    mean = np.repeat(last[:, None], horizon, axis=1)
    return Forecast("m", mean, quantiles, LEVELS, last), realised


def test_mirrored_pairs_skip_the_median_and_unpaired_levels() -> None:
    assert mirrored_pairs((0.05, 0.1, 0.5, 0.9, 0.95)) == [(0, 4), (1, 3)]
    assert mirrored_pairs((0.1, 0.3, 0.5, 0.8)) == []


def test_schedule_lets_a_row_learn_only_from_targets_known_by_its_time() -> None:
    realised = np.ones((5, 2))
    realised[1, 1] = np.nan  # a gap: row 1 never informs another
    outcomes = Outcomes.on_grid(np.array([0, 1, 2, 3, 4]) * 2, 3, realised)  # known at 3, 5, 7, 9, 11
    order, counts = outcomes.schedule()
    assert list(order) == [0, 2, 3, 4]
    # Row issued at 4 may use row 0 (known at 3) only; at 6: still row 0 (row 1 has a gap); at 8: 0 and 2.
    assert list(counts) == [0, 0, 1, 1, 2]
    with pytest.raises(InputError, match="outcomes"):
        Outcomes(np.array([0, 1]), np.array([0, 2]), np.ones((2, 1)))


def test_conformal_rule_by_hand() -> None:
    forecast, realised = _normal_forecasts(30, 0.005, horizon=1)
    outcomes = Outcomes.on_grid(np.arange(30), 1, realised)
    out = Conformal(window=10, min_history=5).calibrate(forecast, outcomes)
    np.testing.assert_array_equal(out.quantiles[:5], forecast.quantiles[:5])  # too little history
    np.testing.assert_array_equal(out.quantiles[..., 2], forecast.quantiles[..., 2])  # the median never moves
    np.testing.assert_array_equal(out.mean, forecast.mean)
    row = 25  # learns from rows 15..24 (the 10 most recent realised)
    past = slice(15, 25)
    q, y, last = forecast.quantiles[past, 0], realised[past, 0], forecast.last_values[past]
    for lo, hi, coverage in ((1, 3, 0.8), (0, 4, 0.9)):
        scores = np.sort(np.maximum(q[:, lo] - y, y - q[:, hi]) / last)
        c = scores[int(np.ceil(11 * coverage)) - 1]  # the ceil((n + 1)(1 - 2a))-th smallest
        last_row = forecast.last_values[row]
        assert out.quantiles[row, 0, lo] == pytest.approx(forecast.quantiles[row, 0, lo] - c * last_row)
        assert out.quantiles[row, 0, hi] == pytest.approx(forecast.quantiles[row, 0, hi] + c * last_row)


@pytest.mark.parametrize("sigma", [0.003, 0.03])  # three times too narrow, three times too wide
def test_calibrated_coverage_is_within_three_points_of_nominal_on_later_rows(sigma: float) -> None:
    forecast, realised = _normal_forecasts(1500, sigma)
    outcomes = Outcomes.on_grid(np.arange(1500) * 4, 4, realised)
    calibrated = Conformal().calibrate(forecast, outcomes)
    held_out = np.arange(300, 1500)
    before = forecast_metrics(forecast.take(held_out), realised[held_out])
    after = forecast_metrics(calibrated.take(held_out), realised[held_out])
    assert abs(before["coverage_80"] - 0.8) > 0.15  # the raw forecast is far off ...
    assert after["coverage_80"] == pytest.approx(0.8, abs=0.03)  # ... the calibrated one is not
    assert after["coverage_90"] == pytest.approx(0.9, abs=0.03)
    assert after["wql"] < before["wql"]


def _series(n: int = 2400, seed: int = 3) -> pd.Series:
    rng = np.random.default_rng(seed)
    vol = np.where(np.arange(n) < n // 2, 0.004, 0.012)  # a volatility regime change
    index = pd.date_range("2023-01-01", periods=n, freq="h", tz="UTC")
    return pd.Series(100 * np.exp(np.cumsum(rng.normal(0, vol))), index=index)


def test_perturbing_the_future_leaves_every_calibrated_forecast_up_to_it_unchanged() -> None:
    params = EvalParams(context=128, horizon=24, stride=12)
    models = {"random-walk": RandomWalkForecaster(), "naive": NaiveForecaster("naive")}
    walk = WalkForward(calibrated=frozenset(models), ensemble=dict.fromkeys(models, 1.0), calibrate_ensemble=True)
    series = _series()
    windows, forecasts = walk_forward("S", series, models, params, walk)
    t = windows.origins[150]
    future = series.copy()
    after = future.index >= t
    future[after] = future[after] * np.exp(np.random.default_rng(9).normal(0, 0.05, after.sum()))
    windows2, perturbed = walk_forward("S", future, models, params, walk)
    assert list(windows2.origins) == list(windows.origins)
    upto = np.flatnonzero(windows.origins <= t)
    later = np.flatnonzero(windows.origins > t)
    raw = RandomWalkForecaster().forecast(list(windows.contexts), 24, params.quantile_levels)
    assert not np.allclose(forecasts["random-walk"].quantiles[upto], raw.quantiles[upto])  # calibration acted
    for name in ("random-walk", "naive", "ensemble"):
        np.testing.assert_array_equal(perturbed[name].quantiles[upto], forecasts[name].quantiles[upto])
        np.testing.assert_array_equal(perturbed[name].mean[upto], forecasts[name].mean[upto])
        assert not np.allclose(perturbed[name].quantiles[later], forecasts[name].quantiles[later])
