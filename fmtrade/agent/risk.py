"""Hard risk limits, applied after every reasoner and independent of it: a reasoner says which way
and how sure, this module alone says how much.

Sizing mirrors the backtest's ``RiskStrategy`` (fmtrade/backtest/strategies.py): the horizon-return
spread ``sigma = (q90 - q10) / 2.563`` and ``fraction = conviction * target_sigma / sigma`` with
``target_sigma = target_volatility * sqrt(horizon / bars_per_year)``; without a forecast the last
24 bars' realised volatility stands in for one bar's sigma. Then, in order: the leverage cap, no
short on spot, the member-disagreement gate, the notional cap per symbol, the gross-exposure cap,
and the instrument's rules (quantity step, min/max quantity, min notional). Every change a rule
makes is returned as a :class:`Clamp` for the journal. The daily-loss kill switch flattens all.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from fmtrade.agent.broker import Account, OrderIntent, order_link_id
from fmtrade.agent.schemas import DecisionRecord, Observation
from fmtrade.backtest.strategies import Z90
from fmtrade.config import AgentSettings
from fmtrade.data.bybit import Instrument

_SPOT = "spot"


@dataclass(frozen=True)
class Clamp:
    """One risk rule changing a target position (``before``/``after``: signed base quantity)."""

    symbol: str
    rule: str
    before: float
    after: float
    reason: str


@dataclass(frozen=True)
class RiskPlan:
    """What risk made of one decision: the target position and the order (None: nothing to trade)."""

    symbol: str
    current_qty: float
    target_qty: float
    intent: OrderIntent | None
    clamps: list[Clamp] = field(default_factory=list)


def floor_to_step(qty: float, step: float) -> float:
    """``qty`` (>= 0) rounded down to a multiple of ``step``, without float noise in the decimals."""
    if step <= 0:
        return qty
    decimals = max(0, math.ceil(-math.log10(step))) + 2
    return round(math.floor(qty / step + 1e-9) * step, decimals)


class RiskManager:
    """Turns a decision into an order intent within the configured limits."""

    def __init__(
        self, settings: AgentSettings, instruments: Mapping[str, Instrument], bars_per_year: float = 24 * 365
    ) -> None:
        self.settings = settings
        self.instruments = dict(instruments)
        self.bars_per_year = bars_per_year

    # Sizing ------------------------------------------------------------------------------
    def sigma(self, observation: Observation) -> tuple[float, int] | None:
        """(horizon-return sigma, horizon in bars) from the forecast's quantiles, else realised volatility."""
        forecast = observation.forecast
        if forecast is not None and forecast.q90 > forecast.q10:
            return max((forecast.q90 - forecast.q10) / (2 * Z90), 1e-9), forecast.horizon
        vol = observation.indicators.volatility_24h
        if vol is not None and vol > 0:
            return vol, 1
        return None

    def plan(
        self, run_id: str, cycle: int, record: DecisionRecord, observation: Observation, account: Account
    ) -> RiskPlan:
        """The order that takes ``record.symbol`` to its risk-checked target (delta from the current position)."""
        symbol = record.symbol
        position = account.positions.get(symbol)
        current = position.qty if position is not None else 0.0
        decision = record.decision
        if decision.action == "hold":
            return RiskPlan(symbol, current, current, None)
        price = observation.book.mid if observation.book is not None else observation.last_price
        clamps: list[Clamp] = []
        spread = self.sigma(observation)
        if spread is None or account.equity <= 0 or price <= 0:
            why = "no forecast spread or realised volatility to size from" if spread is None else "no equity or price"
            clamps.append(Clamp(symbol, "no_sizing", current, current, f"{why}: keeping the position"))
            return RiskPlan(symbol, current, current, None, clamps)
        sigma, horizon = spread
        target_sigma = self.settings.target_volatility * math.sqrt(horizon / self.bars_per_year)
        sign = 1.0 if decision.action == "long" else -1.0
        fraction = sign * decision.conviction * target_sigma / sigma
        target = fraction * account.equity / price
        target = self._limits(symbol, observation, account, current, target, price, clamps)
        intent, target = self._order(run_id, cycle, observation.category, symbol, current, target, price, clamps)
        return RiskPlan(symbol, current, target, intent, clamps)

    def _limits(
        self,
        symbol: str,
        observation: Observation,
        account: Account,
        current: float,
        target: float,
        price: float,
        clamps: list[Clamp],
    ) -> float:
        """Leverage, spot, disagreement, per-symbol notional and gross-exposure caps, in that order."""
        s, equity = self.settings, account.equity

        def cap(value: float, limit: float, rule: str, reason: str) -> float:
            if abs(value) <= limit:
                return value
            clamped = math.copysign(limit, value)
            clamps.append(Clamp(symbol, rule, value, clamped, reason))
            return clamped

        lev_qty = s.max_leverage * equity / price
        target = cap(target, lev_qty, "max_leverage", f"|notional| above {s.max_leverage:g}x equity {equity:.2f}")
        if observation.category == _SPOT and target < 0:
            clamps.append(Clamp(symbol, "spot_no_short", target, 0.0, "spot cannot go short: flat instead"))
            target = 0.0
        forecast = observation.forecast
        if forecast is not None and forecast.disagreement > s.max_disagreement and target != current:
            reason = f"member disagreement {forecast.disagreement:.4g} > max_disagreement {s.max_disagreement:g}: hold"
            clamps.append(Clamp(symbol, "disagreement", target, current, reason))
            return current
        target = cap(
            target,
            s.max_notional_per_symbol / price,
            "max_notional_per_symbol",
            f"notional above max_notional_per_symbol {s.max_notional_per_symbol:g}",
        )
        held = account.positions.get(symbol)
        others = account.gross_exposure - (abs(held.notional) if held is not None else 0.0)
        gross_cap = min(s.max_gross_exposure, s.max_leverage) * equity
        room = max(gross_cap - others, 0.0) / price
        return cap(
            target,
            room,
            "max_gross_exposure",
            f"gross exposure would pass {min(s.max_gross_exposure, s.max_leverage):g}x equity "
            f"({others:.2f} held in other symbols)",
        )

    def _order(
        self,
        run_id: str,
        cycle: int,
        category: str,
        symbol: str,
        current: float,
        target: float,
        price: float,
        clamps: list[Clamp],
    ) -> tuple[OrderIntent | None, float]:
        """The instrument's rules on the delta: step, max qty, min qty, min notional."""
        delta = target - current
        if delta == 0:
            return None, current
        instrument = self.instruments.get(symbol)
        qty = abs(delta)
        if instrument is not None:
            qty = floor_to_step(min(qty, instrument.max_qty), instrument.qty_step)
            if qty != abs(delta):
                rounded = current + math.copysign(qty, delta)
                reason = f"quantity rounded down to qty_step {instrument.qty_step:g} (max_qty {instrument.max_qty:g})"
                clamps.append(Clamp(symbol, "qty_step", target, rounded, reason))
            below = self._below_minimum(instrument, qty, price)
            if below is not None:
                clamps.append(Clamp(symbol, below[0], current + math.copysign(qty, delta), current, below[1]))
                return None, current
        if qty <= 0:
            return None, current
        side = "Buy" if delta > 0 else "Sell"
        intent = OrderIntent(
            symbol=symbol, category=category, side=side, qty=qty, order_link_id=order_link_id(run_id, cycle, symbol)
        )
        return intent, current + math.copysign(qty, delta)

    @staticmethod
    def _below_minimum(instrument: Instrument, qty: float, price: float) -> tuple[str, str] | None:
        if qty < instrument.min_qty:
            return "min_qty", f"order quantity {qty:g} below min_qty {instrument.min_qty:g}: no order"
        if instrument.min_notional is not None and qty * price < instrument.min_notional:
            return "min_notional", f"order notional {qty * price:.4g} below min_notional {instrument.min_notional:g}"
        return None

    # Kill switch -----------------------------------------------------------------------
    def kill_switch(self, account: Account, day_start_equity: float) -> Clamp | None:
        """A clamp (rule ``daily_loss``) when equity fell below the day's start by more than the limit."""
        floor = day_start_equity * (1 - self.settings.daily_loss_limit)
        if account.equity >= floor:
            return None
        reason = (
            f"equity {account.equity:.2f} below day start {day_start_equity:.2f} x (1 - daily_loss_limit "
            f"{self.settings.daily_loss_limit:g}) = {floor:.2f}: flatten and stop"
        )
        return Clamp("*", "daily_loss", account.equity, floor, reason)

    def flatten(self, run_id: str, cycle: int, category: str, account: Account) -> list[OrderIntent]:
        """Reduce-only orders closing every open position."""
        return [
            OrderIntent(
                symbol=symbol,
                category=category,
                side="Sell" if position.qty > 0 else "Buy",
                qty=abs(position.qty),
                order_link_id=order_link_id(run_id, cycle, symbol),
                reduce_only=True,
            )
            for symbol, position in sorted(account.positions.items())
            if position.qty != 0
        ]
