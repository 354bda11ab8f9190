"""Synthetic markets: deterministic, valid OHLCV, and the stylised facts of crypto returns."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fmtrade.data.importer import validate_bars
from fmtrade.data.synthetic import SyntheticSpec, synthesize
from fmtrade.errors import InputError

SYMBOLS = ["SYNA", "SYNB", "SYNC"]


@pytest.fixture(scope="module")
def market():
    return synthesize(SYMBOLS, SyntheticSpec(hours=20_000, seed=11))


def log_returns(market) -> pd.DataFrame:
    return pd.DataFrame({s: np.log(b["close"]).diff() for s, b in market.bars.items()}).dropna()


def test_same_seed_same_market_other_seed_differs():
    spec = SyntheticSpec(hours=500, seed=3)
    a, b = synthesize(SYMBOLS, spec), synthesize(SYMBOLS, spec)
    for symbol in SYMBOLS:
        pd.testing.assert_frame_equal(a.bars[symbol], b.bars[symbol])
        pd.testing.assert_frame_equal(a.funding[symbol], b.funding[symbol])
    c = synthesize(SYMBOLS, SyntheticSpec(hours=500, seed=4))
    assert not np.allclose(a.bars["SYNA"]["close"], c.bars["SYNA"]["close"])


def test_bars_are_valid_hourly_ohlcv(market):
    for bars in market.bars.values():
        assert len(bars) == 20_000
        assert bars.index[0] == pd.Timestamp("2022-01-01", tz="UTC")
        validate_bars(bars.reset_index(), "60")  # positive, aligned, increasing, high/low envelope
        np.testing.assert_array_equal(bars["open"].to_numpy()[1:], bars["close"].to_numpy()[:-1])
        assert (bars["turnover"] > 0).all()


def test_fat_tails_and_volatility_clustering(market):
    returns = log_returns(market)
    for symbol in SYMBOLS:
        r = returns[symbol]
        assert r.kurt() > 3.0  # Gaussian: 0
        squared, absolute = r**2, r.abs()
        assert squared.autocorr(1) > 0.05
        assert min(absolute.autocorr(lag) for lag in (1, 6, 24)) > 0.05  # clustering persists for a day
        assert abs(r.autocorr(1)) < 0.05  # but the returns themselves are close to unpredictable
        assert (r.abs() > 6 * r.std()).sum() > 5  # jumps / tail events a Gaussian would almost never give


@pytest.mark.parametrize("target", [0.2, 0.7])
def test_cross_asset_correlation_tracks_the_target(target):
    market = synthesize(SYMBOLS, SyntheticSpec(hours=15_000, seed=5, correlation=target))
    corr = log_returns(market).corr().to_numpy()[np.triu_indices(3, 1)]
    assert np.all(np.abs(corr - target) < 0.06), corr


def test_regimes_switch_and_change_volatility(market):
    regimes = market.regimes
    assert 0.05 < regimes.mean() < 0.5
    assert (regimes.diff().abs() > 0).sum() > 20
    r = log_returns(market)["SYNA"]
    turbulent = regimes.reindex(r.index) == 1
    assert r[turbulent].std() > 1.5 * r[~turbulent].std()


def test_funding_is_eight_hourly_and_follows_the_market(market):
    returns = log_returns(market)
    for symbol in SYMBOLS:
        funding = market.funding[symbol]["funding_rate"]
        assert set(funding.index.hour) == {0, 8, 16}
        assert (funding.index.to_series().diff().dropna() == pd.Timedelta(hours=8)).all()
        assert funding.index[0] >= market.bars[symbol].index[0] and funding.index[-1] <= market.bars[symbol].index[-1]
        assert 0 < funding.mean() < 5e-4 and funding.abs().max() <= 0.0075
        trailing = returns[symbol].rolling(8).sum().shift(1).reindex(funding.index)
        assert funding.corr(trailing) > 0.2


def test_bad_specs_are_rejected():
    with pytest.raises(InputError, match="hours"):
        synthesize(SYMBOLS, SyntheticSpec(hours=1))
    with pytest.raises(InputError, match="correlation"):
        synthesize(SYMBOLS, SyntheticSpec(correlation=-0.9))
    with pytest.raises(InputError, match="unique"):
        synthesize(["A", "A"], SyntheticSpec(hours=10))
    with pytest.raises(InputError, match="start"):
        synthesize(["A"], SyntheticSpec(hours=10, start="someday"))
