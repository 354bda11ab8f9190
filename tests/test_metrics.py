"""Metrics against values computed by hand on small arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fmtrade.errors import InputError
from fmtrade.metrics import (
    directional_accuracy,
    forecast_metrics,
    forecast_metrics_from_arrays,
    pinball_per_row,
    relative_wql,
    trading_metrics,
    weighted_quantile_loss,
    wql_per_row,
)
from fmtrade.models.base import Forecast


def test_weighted_quantile_loss_by_hand() -> None:
    # y = 10, quantiles 8 / 10 / 13 at 0.1 / 0.5 / 0.9:
    # QL_0.1 = 0.1 * 2 = 0.2, QL_0.5 = 0, QL_0.9 = (1 - 0.9) * 3 = 0.3 -> WQL = mean_q 2 QL / |y| = 2 * 0.5 / 3 / 10.
    wql = weighted_quantile_loss(np.array([[[8.0, 10.0, 13.0]]]), (0.1, 0.5, 0.9), np.array([[10.0]]))
    assert wql == pytest.approx(2 * 0.5 / 3 / 10)
    # Pooled over windows: numerator and denominator summed over both rows.
    q = np.array([[[8.0, 10.0, 13.0]], [[1.0, 2.0, 3.0]]])
    y = np.array([[10.0], [4.0]])  # second row: QL 0.1*3 + 0.5*2 + 0.9*1 = 2.2
    assert weighted_quantile_loss(q, (0.1, 0.5, 0.9), y) == pytest.approx(2 * (0.5 + 2.2) / 3 / 14)


def test_per_row_losses_are_the_terms_of_the_pooled_wql() -> None:
    rng = np.random.default_rng(1)
    y = 100 + rng.normal(0, 1, (40, 6))
    q = np.sort(100 + rng.normal(0, 1, (40, 6, 3)), axis=-1)
    levels = (0.1, 0.5, 0.9)
    pooled = 2 * pinball_per_row(q, levels, y).sum() / (3 * np.abs(y).sum())
    assert pooled == pytest.approx(weighted_quantile_loss(q, levels, y), rel=1e-9)
    assert wql_per_row(q, levels, y)[0] == pytest.approx(weighted_quantile_loss(q[:1], levels, y[:1]), rel=1e-9)
    y[3, 2] = np.nan
    assert np.isnan(pinball_per_row(q, levels, y)[3]) and np.isfinite(pinball_per_row(q, levels, y)[4])


def _random_walk_like(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Realised ``[n, 4]``, a random walk's quantiles, and a model that knows half the next move."""
    rng = np.random.default_rng(seed)
    moves = rng.normal(0, 1, (n, 4))
    y = 100 + moves
    z = np.array([-1.2816, 0.0, 1.2816])
    rw = 100 + np.broadcast_to(z, (n, 4, 3))
    informed = 100 + 0.5 * moves[..., None] + np.sqrt(0.75) * z
    return y, rw, informed


def test_relative_wql_block_bootstrap_interval() -> None:
    levels = (0.1, 0.5, 0.9)
    y, rw, informed = _random_walk_like(300)
    anchor = pinball_per_row(rw, levels, y)
    same = relative_wql(pinball_per_row(rw.copy(), levels, y), anchor)
    assert same["wql_rel_rw"] == 1.0 and same["wql_rel_ci_low"] <= 1.0 <= same["wql_rel_ci_high"]
    better = relative_wql(pinball_per_row(informed, levels, y), anchor)
    assert better["wql_rel_rw"] < 1.0 and better["wql_rel_ci_high"] < 1.0  # the interval excludes 1
    assert better["wql_rel_ci_low"] < better["wql_rel_rw"] < better["wql_rel_ci_high"]
    # Noise is not skill: a model no better than the random walk (another draw of its quantiles
    # around a shifted centre) gets an interval that contains 1 or lies above it.
    jittered = rw + np.random.default_rng(5).normal(0, 0.05, (300, 1, 1))
    noise = relative_wql(pinball_per_row(jittered, levels, y), anchor)
    assert noise["wql_rel_ci_high"] >= 1.0
    assert relative_wql(anchor, anchor, seed=1) == relative_wql(anchor, anchor, seed=1)
    with pytest.raises(InputError, match="model"):
        relative_wql(anchor[:5], anchor)


def test_point_metrics_mase_and_coverage_by_hand() -> None:
    point = np.array([[1.0, 2.0], [3.0, 4.0]])
    realised = np.array([[2.0, 2.0], [3.0, 6.0]])
    # Quantiles 0.1 / 0.5 / 0.9 around the point: +-0.5, so only y == point is inside the 80% interval.
    quantiles = np.stack([point - 0.5, point, point + 0.5], axis=-1)
    contexts = [np.array([1.0, 2.0, 4.0]), np.array([3.0, np.nan, 3.0, 5.0])]
    out = forecast_metrics_from_arrays(
        point, quantiles, (0.1, 0.5, 0.9), np.array([1.5, 3.5]), realised, contexts=contexts
    )
    assert out["windows"] == 2
    assert out["mae"] == pytest.approx(0.75)  # (1 + 0 + 0 + 2) / 4
    assert out["rmse"] == pytest.approx(math.sqrt(1.25))  # sqrt((1 + 0 + 0 + 4) / 4)
    assert out["mape"] == pytest.approx((1 / 2 + 0 + 0 + 2 / 6) / 4)
    # Window scales (random-walk, seasonality 1): mean |diff| of [1, 2, 4] = 1.5; of [3, 3, 3, 5] (NaN filled) = 2/3.
    assert out["mase"] == pytest.approx((0.5 / 1.5 + 1.0 / (2 / 3)) / 2)
    assert out["coverage_80"] == pytest.approx(0.5)
    assert out["coverage_50"] is None and out["coverage_90"] is None  # pairs not forecast
    # Direction at the last step: forecast moves +0.5 (row 0) and +0.5 (row 1) vs realised +0.5 and +2.5.
    assert out["directional_accuracy"] == 1.0 and out["da_n"] == 2


def test_forecast_metrics_reads_median_from_forecast() -> None:
    fc = Forecast(
        "m",
        mean=np.array([[100.0, 200.0]]),  # not used for point metrics
        quantiles=np.array([[[0.5, 1.0, 1.5], [1.5, 2.0, 2.5]]]),
        quantile_levels=(0.25, 0.5, 0.75),
        last_values=np.array([1.0]),
    )
    out = forecast_metrics(fc, np.array([[1.0, 3.0]]))
    assert out["mae"] == pytest.approx(0.5)
    assert out["coverage_50"] == pytest.approx(0.5)
    assert out["mase"] is None  # no contexts given


def test_directional_accuracy_wilson_and_binomial_by_hand() -> None:
    pred = np.array([1, 1, 1, 1, 1, 1, 1, 1, -1, -1, 0, 1], dtype=float)
    real = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0], dtype=float)  # 8 hits of 10 calls; 2 rows make no call
    out = directional_accuracy(pred, real)
    assert out["da_n"] == 10 and out["directional_accuracy"] == pytest.approx(0.8)
    # Two-sided exact test: 2 * P(X >= 8 | n=10, p=.5) = 2 * (45 + 10 + 1) / 1024.
    assert out["da_p_value"] == pytest.approx(2 * 56 / 1024)
    z, n, p = 1.959963984540054, 10, 0.8
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert out["da_ci_low"] == pytest.approx(centre - half)
    assert out["da_ci_high"] == pytest.approx(centre + half)
    none = directional_accuracy(np.zeros(5), np.ones(5))
    assert none["directional_accuracy"] is None and none["da_n"] == 0


def test_forecast_that_means_unchanged_makes_no_directional_call() -> None:
    last = np.array([0.1 + 0.2, 1234.5678])  # medians equal to last up to float rounding
    point = np.stack([last * (1 + 1e-15), last], axis=1)
    out = forecast_metrics_from_arrays(point, point[..., None], (0.5,), last, point * 1.01)
    assert out["da_n"] == 0 and out["directional_accuracy"] is None


def test_trading_metrics_by_hand() -> None:
    r = np.array([0.01, -0.02, 0.03, 0.0])
    ann = 365.0  # daily bars in a 24/7 market
    out = trading_metrics(r, interval="D")
    total = np.prod(1 + r) - 1
    assert out["total_return"] == pytest.approx(total)
    annual = (1 + total) ** (ann / 4) - 1
    assert out["annual_return"] == pytest.approx(annual)
    assert out["annual_volatility"] == pytest.approx(np.std(r, ddof=1) * math.sqrt(ann))
    assert out["sharpe"] == pytest.approx(r.mean() / np.std(r, ddof=1) * math.sqrt(ann))
    downside = math.sqrt(np.mean(np.minimum(r, 0) ** 2)) * math.sqrt(ann)
    assert out["sortino"] == pytest.approx(r.mean() * ann / downside)
    assert out["max_drawdown"] == pytest.approx(0.98 - 1)  # 1.01 -> 0.9898
    assert out["calmar"] == pytest.approx(annual / 0.02)
    hourly = trading_metrics(r, interval="60")
    assert hourly["annual_volatility"] == pytest.approx(np.std(r, ddof=1) * math.sqrt(24 * 365))


def test_trading_metrics_undefined_values_are_none() -> None:
    out = trading_metrics([0.01, 0.02, 0.01])  # no loss: no drawdown, no downside
    assert out["max_drawdown"] == 0.0
    assert out["calmar"] is None and out["sortino"] is None


def test_metric_input_errors() -> None:
    with pytest.raises(InputError, match="realised"):
        weighted_quantile_loss(np.ones((2, 3, 1)), (0.5,), np.ones((2, 2)))
    with pytest.raises(InputError, match="realised"):
        forecast_metrics_from_arrays(np.ones((1, 2)), np.ones((1, 2, 1)), (0.5,), np.ones(1), [[1.0, np.nan]])
    with pytest.raises(InputError, match="returns"):
        trading_metrics([])
    with pytest.raises(InputError, match="interval"):
        trading_metrics([0.01], interval="7")
