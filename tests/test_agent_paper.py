"""The paper broker fills with the backtest's own accounting and never places an order twice."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fmtrade.agent.broker import OrderIntent, order_link_id
from fmtrade.agent.paper import PaperBroker
from fmtrade.backtest.market import Market
from fmtrade.backtest.simulator import Costs, simulate
from fmtrade.backtest.windows import Windows

COSTS = Costs(taker_fee_bps=7.5, slippage_bps=2.0, min_trade_notional=5.0)


def _intent(side: str, qty: float, cycle: int = 1, symbol: str = "AAAUSDT", **kw: object) -> OrderIntent:
    return OrderIntent(
        symbol=symbol, category="linear", side=side, qty=qty, order_link_id=order_link_id("r", cycle, symbol), **kw
    )


def test_fill_costs_match_the_backtest_simulator() -> None:
    """The same trade (all equity long at one price) costs the paper broker exactly what simulate charges."""
    closes = np.array([100.0, 101.0, 103.0, 102.0])
    index = pd.date_range("2024-01-01", periods=4, freq="h", tz="UTC")
    market = Market("AAAUSDT", "60", index, closes, np.ones(4))
    windows = Windows("AAAUSDT", 1, 4, np.array([1]), index[[1]], np.array([0]))
    sim = simulate(market, windows, np.array([1.0]), COSTS, 10_000.0)
    trade = sim.trades.iloc[0]

    prices = {"AAAUSDT": float(trade["price"])}
    broker = PaperBroker(COSTS, 10_000.0, prices.__getitem__)
    order = broker.place(_intent("Buy", float(trade["units"])))
    assert order.status == "Filled" and order.avg_price == trade["price"]
    assert order.fee == pytest.approx(trade["cost"], rel=0, abs=0)  # bit-identical
    assert order.fee == pytest.approx(trade["notional"] * (7.5 + 2.0) / 1e4)
    for row in sim.bars.itertuples():
        broker.mark("AAAUSDT", float(row.price))
        assert broker.account().equity == pytest.approx(row.equity, rel=1e-12)


def test_same_order_link_id_is_placed_once() -> None:
    prices = {"AAAUSDT": 50.0}
    broker = PaperBroker(COSTS, 1_000.0, prices.__getitem__)
    first = broker.place(_intent("Buy", 2.0))
    prices["AAAUSDT"] = 60.0
    again = broker.place(_intent("Buy", 2.0))
    assert again == first
    assert len(broker.state.orders) == 1
    assert broker.account().positions["AAAUSDT"].qty == 2.0
    assert broker.lookup(first.order_link_id, "AAAUSDT") == first
    assert broker.lookup(first.order_link_id, "BBBUSDT") is None
    assert broker.lookup("fmt-unknown", "AAAUSDT") is None


def test_small_orders_are_rejected_like_the_backtest_skips_them() -> None:
    broker = PaperBroker(COSTS, 1_000.0, {"AAAUSDT": 1.0}.__getitem__)
    order = broker.place(_intent("Buy", 4.0))
    assert order.status == "Rejected" and "min_trade_notional" in (order.reason or "")
    assert broker.account().equity == 1_000.0 and not broker.account().positions


def test_short_flip_average_price_funding_and_restore() -> None:
    prices = {"AAAUSDT": 100.0}
    broker = PaperBroker(COSTS, 10_000.0, prices.__getitem__)
    broker.place(_intent("Sell", 10.0, cycle=1))
    assert broker.account().positions["AAAUSDT"].qty == -10.0
    paid = broker.charge_funding("AAAUSDT", 0.001)
    assert paid == pytest.approx(-1.0)  # shorts receive a positive rate
    prices["AAAUSDT"] = 90.0
    broker.place(_intent("Buy", 15.0, cycle=2))  # flips to 5 long at 90
    position = broker.account().positions["AAAUSDT"]
    assert position.qty == pytest.approx(5.0) and position.avg_price == 90.0
    rejected = broker.place(_intent("Buy", 1.0, cycle=3, reduce_only=True))
    assert rejected.status == "Rejected"

    restored = PaperBroker(COSTS, 1.0, prices.__getitem__)
    restored.restore(broker.dump())
    assert restored.account() == broker.account()
    flip = broker.lookup(order_link_id("r", 2, "AAAUSDT"), "AAAUSDT")
    assert flip is not None and restored.place(_intent("Buy", 15.0, cycle=2)) == flip
    assert restored.account() == broker.account()  # replaying a known id changed nothing
