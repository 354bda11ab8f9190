"""Statistical baselines: the random walk against a plain per-row reference, statsforecast
wrappers against statsforecast itself, and input errors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm
from statsforecast.models import Naive

from fmtrade.errors import InputError
from fmtrade.models.base import impute_forward
from fmtrade.models.baselines import (
    AutoARIMAForecaster,
    AutoETSForecaster,
    NaiveForecaster,
    RandomWalkForecaster,
    SeasonalNaiveForecaster,
    ThetaForecaster,
)

LEVELS = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)


def _prices(n: int, seed: int, vol: float = 0.01) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 100.0 * np.exp(np.cumsum(rng.normal(0.0005, vol, size=n)))


def _reference_random_walk(context: np.ndarray, horizon: int, levels, min_samples: int):
    """Row-by-row restatement of the documented random-walk rule."""
    logp = np.log(impute_forward(context))
    last = context[-1]
    r1 = np.diff(logp)
    mean, quant = [], []
    for h in range(1, horizon + 1):
        sample = logp[h:] - logp[:-h] if logp.size - h >= min_samples else np.sqrt(h) * r1
        sample = sample - np.quantile(sample, 0.5)
        quant.append(last * np.exp(np.quantile(sample, levels)))
        mean.append(last * np.mean(np.exp(sample)))
    return np.array(mean), np.array(quant)


def test_random_walk_matches_per_row_reference_on_mixed_batch() -> None:
    contexts = [_prices(200, 1), _prices(45, 2), _prices(12, 3, vol=0.03), _prices(300, 4)]
    contexts[0][50:53] = np.nan  # gaps inside are filled forward
    contexts[3][:5] = np.nan  # leading NaNs are dropped
    model = RandomWalkForecaster("random-walk")
    fc = model.forecast(contexts, 20, LEVELS)
    assert fc.quantiles.shape == (4, 20, len(LEVELS))
    for i, ctx in enumerate(contexts):
        mean, quant = _reference_random_walk(ctx, 20, LEVELS, model.min_samples)
        np.testing.assert_allclose(fc.mean[i], mean, rtol=1e-12)
        np.testing.assert_allclose(fc.quantiles[i], quant, rtol=1e-12)
    # Driftless: the median is exactly the last price, at every step.
    np.testing.assert_array_equal(fc.median, np.repeat(fc.last_values[:, None], 20, axis=1))
    # Deterministic and independent of batch composition.
    alone = model.forecast([contexts[1]], 20, LEVELS)
    np.testing.assert_array_equal(alone.quantiles[0], fc.quantiles[1])


def test_random_walk_spread_grows_with_horizon_and_uses_fallback_for_short_contexts() -> None:
    ctx = _prices(40, 7)
    fc = RandomWalkForecaster("random-walk", min_samples=32).forecast([ctx], 16, LEVELS)
    spread = fc.quantile(0.95)[0] - fc.quantile(0.05)[0]
    assert spread[-1] > spread[0] > 0
    # From h = 9 there are < 32 overlapping 9-step returns: the sqrt(h)-scaled 1-step sample.
    r1 = np.diff(np.log(ctx))
    centred = np.sqrt(9) * r1 - np.quantile(np.sqrt(9) * r1, 0.5)
    np.testing.assert_allclose(fc.quantiles[0, 8], ctx[-1] * np.exp(np.quantile(centred, LEVELS)), rtol=1e-12)


def test_naive_quantiles_come_from_statsforecast_intervals() -> None:
    ctx = _prices(120, 11)
    fc = NaiveForecaster("naive").forecast([ctx], 6, (0.1, 0.5, 0.9))
    ref = Naive().forecast(y=np.log(ctx / ctx[-1]), h=6, level=[80])
    np.testing.assert_allclose(fc.quantiles[0, :, 0], ctx[-1] * np.exp(ref["lo-80"]), rtol=1e-12)
    np.testing.assert_allclose(fc.quantiles[0, :, 2], ctx[-1] * np.exp(ref["hi-80"]), rtol=1e-12)
    np.testing.assert_array_equal(fc.median[0], np.full(6, ctx[-1]))
    # Mean: log-normal correction with the sd recovered from the 80% interval.
    sd = (ref["hi-80"] - ref["lo-80"]) / (2 * norm.ppf(0.9))
    np.testing.assert_allclose(fc.mean[0], ctx[-1] * np.exp(sd**2 / 2), rtol=1e-12)
    assert np.all(np.diff(fc.mean[0]) > 0)  # the correction grows with the sqrt(h) sd


def test_seasonal_naive_repeats_the_last_season() -> None:
    ctx = np.array([10.0, 11, 12, 13, 10.5, 11.5, 12.5, 13.5, 10.2, 11.2, 12.2, 13.2])
    fc = SeasonalNaiveForecaster("seasonal-naive", season_length=4).forecast([ctx], 6, (0.2, 0.5, 0.8))
    np.testing.assert_allclose(fc.median[0], [10.2, 11.2, 12.2, 13.2, 10.2, 11.2], rtol=1e-12)
    assert (fc.quantile(0.8)[0] > fc.median[0]).all()


@pytest.mark.parametrize(
    "cls, options",
    [
        (NaiveForecaster, {}),
        (SeasonalNaiveForecaster, {"season_length": 24}),
        (AutoETSForecaster, {}),
        (AutoARIMAForecaster, {}),
        (ThetaForecaster, {"season_length": 24}),
    ],
)
def test_statsforecast_baselines_shapes_and_monotone(cls, options) -> None:
    contexts = [_prices(80, 21), _prices(60, 22), _prices(72, 23)]
    contexts[1][30] = np.nan
    fc = cls("m", **options).forecast(contexts, 12, LEVELS)
    assert fc.mean.shape == (3, 12) and fc.quantiles.shape == (3, 12, len(LEVELS))
    assert np.isfinite(fc.quantiles).all() and (fc.quantiles > 0).all()
    assert (np.diff(fc.quantiles, axis=-1) >= 0).all()
    np.testing.assert_allclose(fc.last_values, [c[-1] for c in contexts])


def test_baseline_input_errors_name_the_field() -> None:
    with pytest.raises(InputError, match=r"contexts\[1\].*positive"):
        RandomWalkForecaster("random-walk").forecast([_prices(50, 1), np.array([1.0, -2.0, 3.0])], 4)
    with pytest.raises(InputError, match=r"contexts\[0\].*at least 8"):
        AutoETSForecaster("auto-ets").forecast([_prices(5, 1)], 4)
    with pytest.raises(InputError, match="options"):
        NaiveForecaster("naive", season_length=24)
    with pytest.raises(InputError, match="options.season_length"):
        AutoETSForecaster("auto-ets", season_length=0)
    with pytest.raises(InputError, match="checkpoint"):
        RandomWalkForecaster("random-walk", "/some/weights")
    assert SeasonalNaiveForecaster("s", season_length=24).min_context == 26
    assert ThetaForecaster("t", context_length=512).max_context == 512
