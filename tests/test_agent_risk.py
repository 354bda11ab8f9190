"""Hard risk limits: sizing by volatility target, caps, instrument rules, gates and the kill switch."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from fmtrade.agent.broker import Account, Position, order_link_id
from fmtrade.agent.risk import RiskManager, floor_to_step
from fmtrade.agent.schemas import Decision, DecisionRecord, ForecastSummary, Indicators, Observation
from fmtrade.backtest.strategies import Z90
from fmtrade.config import AgentSettings
from fmtrade.data.bybit import Instrument

AT = datetime(2024, 1, 1, tzinfo=UTC)


def _instrument(symbol: str = "AAAUSDT", step: float = 0.01, min_qty: float = 0.01, min_notional: float = 5.0):
    return Instrument("linear", symbol, "Trading", "AAA", "USDT", 0.01, step, min_qty, 1e6, min_notional)


def _obs(
    q10: float = -0.02, q90: float = 0.02, disagreement: float = 0.001, category: str = "linear", price: float = 100.0
) -> Observation:
    forecast = ForecastSummary(horizon=24, expected_return=0.01, q10=q10, q50=0.0, q90=q90, disagreement=disagreement)
    return Observation(
        symbol="AAAUSDT", category=category, time=AT, last_price=price, indicators=Indicators(), forecast=forecast
    )


def _record(action: str = "long", conviction: float = 1.0) -> DecisionRecord:
    return DecisionRecord(
        symbol="AAAUSDT", decision=Decision(action=action, conviction=conviction, reasons=["test"]), reasoner="rules"
    )


def _account(equity: float = 100_000.0, **positions: tuple[float, float]) -> Account:
    held = {s: Position(symbol=s, qty=q, avg_price=p, mark_price=p) for s, (q, p) in positions.items()}
    cash = equity - sum(q * p for q, p in positions.values())
    return Account(equity=equity, cash=cash, positions=held)


def _risk(**limits: float) -> RiskManager:
    return RiskManager(AgentSettings(**limits), {"AAAUSDT": _instrument()})


def test_volatility_target_sizing_mirrors_the_backtest_strategy() -> None:
    risk = _risk(target_volatility=0.5, max_notional_per_symbol=1e9, max_gross_exposure=10, max_leverage=10)
    plan = risk.plan("run", 3, _record("long", 0.5), _obs(), _account())
    sigma = 0.04 / (2 * Z90)
    fraction = 0.5 * 0.5 * math.sqrt(24 / (24 * 365)) / sigma
    assert plan.target_qty == floor_to_step(fraction * 100_000 / 100.0, 0.01)
    assert plan.intent is not None and plan.intent.side == "Buy" and plan.intent.qty == plan.target_qty
    assert plan.intent.order_link_id == order_link_id("run", 3, "AAAUSDT")
    short = risk.plan("run", 3, _record("short", 0.5), _obs(), _account())
    assert short.target_qty == -plan.target_qty and short.intent is not None and short.intent.side == "Sell"


def test_oversized_orders_are_clamped_with_reasons() -> None:
    """A tight forecast and full conviction want several times equity: every cap in turn cuts it."""
    risk = _risk(max_leverage=2.0, max_notional_per_symbol=50_000.0, max_gross_exposure=1.0)
    tight = _obs(q10=-0.001, q90=0.001)
    plan = risk.plan("run", 1, _record("long", 1.0), tight, _account(BBBUSDT=(100.0, 600.0)))
    rules = [c.rule for c in plan.clamps]
    assert rules == ["max_leverage", "max_notional_per_symbol", "max_gross_exposure"]
    leverage, notional, gross = plan.clamps
    assert leverage.after == pytest.approx(2.0 * 100_000 / 100.0)
    assert notional.after == pytest.approx(500.0) and "max_notional_per_symbol" in notional.reason
    assert gross.after == pytest.approx((100_000 - 60_000) / 100.0)  # the room left beside BBB's 60k
    assert plan.target_qty * 100.0 <= 50_000.0 and all(c.reason for c in plan.clamps)


def test_spot_cannot_go_short() -> None:
    risk = RiskManager(AgentSettings(), {"AAAUSDT": _instrument()})
    plan = risk.plan("run", 1, _record("short", 0.3), _obs(category="spot"), _account(AAAUSDT=(10.0, 100.0)))
    assert [c.rule for c in plan.clamps] == ["spot_no_short"]
    assert plan.target_qty == 0.0
    assert plan.intent is not None and plan.intent.side == "Sell" and plan.intent.qty == 10.0


def test_quantity_rounds_down_to_the_step_and_small_orders_are_skipped() -> None:
    limits = AgentSettings(max_notional_per_symbol=1e9)
    risk = RiskManager(limits, {"AAAUSDT": _instrument(step=0.1, min_qty=0.1, min_notional=5.0)})
    plan = risk.plan("run", 1, _record("long", 0.37), _obs(), _account())
    assert plan.intent is not None
    assert [c.rule for c in plan.clamps] == ["qty_step"] and plan.clamps[0].before != plan.intent.qty
    assert plan.intent.qty == round(plan.intent.qty, 1) and 0 <= plan.clamps[0].before - plan.intent.qty < 0.1
    tiny = risk.plan("run", 1, _record("long", 0.37), _obs(price=100.0), _account(equity=10.0))
    assert tiny.intent is None and tiny.target_qty == 0.0
    assert [c.rule for c in tiny.clamps][-1] in {"min_qty", "min_notional"}
    below_notional = RiskManager(limits, {"AAAUSDT": _instrument(step=0.001, min_qty=0.001)})
    small = below_notional.plan("run", 1, _record("long", 0.3), _obs(), _account(equity=8.0))
    assert small.intent is None and small.clamps[-1].rule == "min_notional"
    assert floor_to_step(0.30000000000000004, 0.1) == 0.3 and floor_to_step(2.999999, 1.0) == 2.0


def test_disagreement_gate_holds_the_position() -> None:
    risk = _risk(max_disagreement=0.02)
    plan = risk.plan("run", 1, _record("long", 1.0), _obs(disagreement=0.05), _account(AAAUSDT=(3.0, 100.0)))
    assert plan.intent is None and plan.target_qty == 3.0
    assert plan.clamps[-1].rule == "disagreement" and "0.05" in plan.clamps[-1].reason


def test_hold_keeps_and_missing_volatility_does_not_trade() -> None:
    risk = _risk()
    assert risk.plan("run", 1, _record("hold", 0.9), _obs(), _account(AAAUSDT=(2.0, 100.0))).intent is None
    blind = Observation(symbol="AAAUSDT", category="linear", time=AT, last_price=100.0, indicators=Indicators())
    plan = risk.plan("run", 1, _record("long", 1.0), blind, _account())
    assert plan.intent is None and plan.clamps[0].rule == "no_sizing"
    seen = blind.model_copy(update={"indicators": Indicators(volatility_24h=0.01)})
    assert risk.plan("run", 1, _record("long", 1.0), seen, _account()).intent is not None


def test_kill_switch_fires_below_the_daily_loss_limit_and_flattens_everything() -> None:
    risk = _risk(daily_loss_limit=0.05)
    assert risk.kill_switch(_account(96_000.0), 100_000.0) is None
    clamp = risk.kill_switch(_account(94_000.0, AAAUSDT=(10.0, 100.0), BBBUSDT=(-5.0, 20.0)), 100_000.0)
    assert clamp is not None and clamp.rule == "daily_loss" and "flatten" in clamp.reason
    orders = risk.flatten("run", 7, "linear", _account(94_000.0, AAAUSDT=(10.0, 100.0), BBBUSDT=(-5.0, 20.0)))
    assert [(o.symbol, o.side, o.qty, o.reduce_only) for o in orders] == [
        ("AAAUSDT", "Sell", 10.0, True),
        ("BBBUSDT", "Buy", 5.0, True),
    ]
