"""Simulator accounting: costs, funding and PnL reconcile exactly with equity."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fmtrade.backtest.market import make_market
from fmtrade.backtest.simulator import Costs, buy_and_hold, simulate
from fmtrade.backtest.windows import Windows
from tests.backtest_support import synthetic_markets

HOUR = pd.Timedelta(hours=1)
T0 = pd.Timestamp("2024-01-01", tz="UTC")


def tiny_market(closes, funding=None):
    index = pd.date_range(T0, periods=len(closes), freq="h", name="timestamp")
    bars = pd.DataFrame({"close": closes, "volume": 1.0}, index=index)
    return make_market("TST", bars, "60", funding)


def windows_at(market, points, stop=None):
    points = np.asarray(points)
    return Windows(
        "TST",
        int(points[0]),
        stop or len(market.timestamps),
        points,
        market.timestamps[points],
        np.zeros(points.size, dtype=np.int64),
    )


def test_hand_computed_long_then_short_with_costs_and_funding():
    # bars: 100 | 110 120 | 90 90 ; long 1x at bar 1 (price 100), short 0.5x at bar 3 (price 120)
    funding = pd.DataFrame({"funding_rate": [0.01]}, index=pd.DatetimeIndex([T0 + 2 * HOUR], name="timestamp"))
    market = tiny_market([100.0, 110.0, 120.0, 90.0, 90.0], funding)
    sim = simulate(market, windows_at(market, [1, 3]), np.array([1.0, -0.5]), Costs(10.0, 0.0, 0.0), 1000.0)
    bars = sim.bars
    # Bar 1: buy 10 units at 100, fee 1.0; pnl 10*(110-100)=100. Funding at T0+2h falls in bar 1's span (T0+1h, T0+2h]:
    # long pays 10 * 110 * 0.01 = 11.
    assert bars["cost"].tolist()[0] == pytest.approx(1.0)
    assert bars["funding"].tolist() == pytest.approx([11.0, 0.0, 0.0, 0.0])
    assert bars["equity"].iloc[0] == pytest.approx(1000 - 1 + 100 - 11)
    # Bar 2: pnl 100 -> equity 1188. Bar 3: trade at 120: target -0.5*1188/120 = -4.95 units, delta -14.95.
    assert bars["equity"].iloc[1] == pytest.approx(1188.0)
    fee = 14.95 * 120 * 10 / 1e4
    assert bars["cost"].iloc[2] == pytest.approx(fee)
    assert bars["units"].iloc[2] == pytest.approx(-4.95)
    assert bars["equity"].iloc[2] == pytest.approx(1188 - fee + (-4.95) * (90 - 120))
    assert sim.trades["side"].tolist() == ["buy", "sell"]
    assert sim.trades["price"].tolist() == [100.0, 120.0]


def test_trades_below_the_minimum_notional_are_skipped():
    market = tiny_market([100.0, 100.0, 101.0, 101.0, 102.0])
    sim = simulate(market, windows_at(market, [1, 2, 3]), np.array([1.0, 1.001, 0.0]), Costs(7.5, 2.0, 5.0), 1000.0)
    assert sim.trades["side"].tolist() == ["buy", "sell"]  # the 1.001 top-up (~1 USDT) is skipped


@pytest.mark.parametrize("strategy_targets", ["alternating", "random"])
def test_final_equity_reconciles_with_pnl_costs_and_funding(strategy_targets):
    market = synthetic_markets(("AAA",), hours=1500)["AAA"]
    assert market.funding is not None and len(market.funding) > 100
    points = np.arange(300, 1500, 24)
    rng = np.random.default_rng(0)
    targets = (
        np.tile([1.0, -1.0, 0.0, 0.5], points.size)[: points.size]
        if strategy_targets == "alternating"
        else rng.uniform(-2, 2, points.size)
    )
    sim = simulate(market, windows_at(market, points), targets, Costs(7.5, 2.0, 5.0), 100_000.0)
    bars = sim.bars
    assert bars["cost"].sum() > 0 and bars["funding"].abs().sum() > 0
    reconciled = sim.initial_equity + bars["pnl"].sum() - bars["cost"].sum() - bars["funding"].sum()
    assert bars["equity"].iloc[-1] == pytest.approx(reconciled, rel=1e-12)
    step = bars["equity"].diff().iloc[1:]
    np.testing.assert_allclose(step, (bars["pnl"] - bars["cost"] - bars["funding"]).iloc[1:], rtol=0, atol=1e-6)
    assert bars["cost"].sum() == pytest.approx(sim.trades["notional"].sum() * 9.5e-4, rel=1e-12)


def test_longs_pay_positive_funding_and_shorts_receive_it():
    funding = pd.DataFrame(
        {"funding_rate": [0.001, 0.001]}, index=pd.DatetimeIndex([T0 + 2 * HOUR, T0 + 4 * HOUR], name="timestamp")
    )
    market = tiny_market([100.0] * 6, funding)
    long = simulate(market, windows_at(market, [1]), np.array([1.0]), Costs(0, 0, 0), 1000.0)
    short = simulate(market, windows_at(market, [1]), np.array([-1.0]), Costs(0, 0, 0), 1000.0)
    assert long.bars["funding"].sum() == pytest.approx(2.0)
    assert short.bars["funding"].sum() == pytest.approx(-2.0)
    assert long.bars["equity"].iloc[-1] == pytest.approx(998.0)


def test_buy_and_hold_trades_once_with_the_same_costs():
    market = synthetic_markets(("AAA",), hours=800, funding=False)["AAA"]
    windows = windows_at(market, np.arange(300, 800, 24))
    bh = buy_and_hold(market, windows, Costs(7.5, 2.0, 5.0), 10_000.0)
    assert len(bh.trades) == 1 and bh.trades["cost"].iloc[0] == pytest.approx(10_000 * 9.5e-4)
    close = market.filled_close()
    units = 10_000 / close[299]
    assert bh.bars["equity"].iloc[-1] == pytest.approx(10_000 - 10_000 * 9.5e-4 + units * (close[799] - close[299]))
