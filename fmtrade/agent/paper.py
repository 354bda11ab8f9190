"""The paper broker: market orders filled against the market with the backtest's own accounting.

A fill happens at the price ``price_source`` gives for the symbol, by default the symbol's mark,
which the agent loop sets every cycle (the book mid when it has a book, else the last closed bar's
close: the next bar's open up to the gap), and pays
``notional * (taker_fee_bps + slippage_bps) / 1e4`` through :func:`fmtrade.backtest.simulator.trade`,
the very step ``simulate`` uses, so a paper run and a backtest of the same trades cost the same.
Orders are idempotent on ``order_link_id``; the whole state serialises to JSON so the journal can
restore it after a restart.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from pydantic import BaseModel, Field

from fmtrade.agent.broker import Account, OrderIntent, OrderState, Position
from fmtrade.backtest.simulator import Costs, trade
from fmtrade.config import Settings
from fmtrade.errors import InputError

PriceSource = Callable[[str], float]


class PaperState(BaseModel):
    """Everything the paper broker knows; restoring it gives back the same account and orders."""

    cash: float
    qty: dict[str, float] = Field(default_factory=dict)
    avg_price: dict[str, float] = Field(default_factory=dict)
    marks: dict[str, float] = Field(default_factory=dict)
    orders: dict[str, OrderState] = Field(default_factory=dict)
    funding_paid: float = 0.0
    fees_paid: float = 0.0


class PaperBroker:
    """Implements :class:`fmtrade.agent.broker.Broker` without an exchange."""

    name = "paper"

    def __init__(self, costs: Costs, initial_equity: float, price_source: PriceSource | None = None) -> None:
        if not initial_equity > 0:
            raise InputError("initial_equity", f"must be > 0, got {initial_equity}")
        self.costs = costs
        self.price_source = price_source
        self.state = PaperState(cash=float(initial_equity))
        self._ids = itertools.count(1)

    @classmethod
    def from_settings(cls, settings: Settings) -> PaperBroker:
        """The backtest's costs (``backtest.*_bps``, ``min_trade_notional``) and ``agent.initial_equity``."""
        b = settings.backtest
        return cls(Costs(b.taker_fee_bps, b.slippage_bps, b.min_trade_notional), settings.agent.initial_equity)

    # State -----------------------------------------------------------------------------
    def dump(self) -> str:
        return self.state.model_dump_json()

    def restore(self, state_json: str) -> None:
        """Take over a state saved with :meth:`dump` (the journal's copy after a restart)."""
        self.state = PaperState.model_validate_json(state_json)
        self._ids = itertools.count(len(self.state.orders) + 1)

    def mark(self, symbol: str, price: float) -> None:
        """Set the price positions in ``symbol`` are valued at."""
        self.state.marks[symbol] = float(price)

    # Broker protocol -------------------------------------------------------------------
    def account(self) -> Account:
        positions = {
            symbol: Position(
                symbol=symbol,
                qty=qty,
                avg_price=self.state.avg_price.get(symbol, 0.0),
                mark_price=self.state.marks.get(symbol, self.state.avg_price.get(symbol, 0.0)),
            )
            for symbol, qty in self.state.qty.items()
            if qty != 0
        }
        equity = self.state.cash + sum(p.notional for p in positions.values())
        return Account(equity=equity, cash=self.state.cash, positions=positions)

    def place(self, intent: OrderIntent) -> OrderState:
        known = self.state.orders.get(intent.order_link_id)
        if known is not None:
            return known
        price = self._price(intent.symbol)
        units = self.state.qty.get(intent.symbol, 0.0)
        signed = intent.qty if intent.side == "Buy" else -intent.qty
        if intent.reduce_only and (units * signed >= 0 or abs(signed) > abs(units)):
            return self._remember(intent, "Rejected", reason="reduce_only order would increase the position")
        cash, new_units, fill = trade(self.state.cash, units, units + signed, price, self.costs)
        if fill is None:
            reason = f"notional {abs(signed) * price:.4g} below min_trade_notional {self.costs.min_trade_notional:g}"
            return self._remember(intent, "Rejected", reason=reason)
        self._update_avg_price(intent.symbol, units, new_units, price)
        self.state.cash, self.state.qty[intent.symbol] = cash, new_units
        self.state.marks[intent.symbol] = price
        self.state.fees_paid += fill.fee
        return self._remember(intent, "Filled", filled_qty=intent.qty, avg_price=price, fee=fill.fee)

    def lookup(self, order_link_id: str, symbol: str) -> OrderState | None:
        order = self.state.orders.get(order_link_id)
        return order if order is not None and order.symbol == symbol else None

    def _price(self, symbol: str) -> float:
        if self.price_source is not None:
            return float(self.price_source(symbol))
        if symbol not in self.state.marks:
            raise InputError("symbol", f"the paper broker has no price for {symbol} yet (mark it first)")
        return self.state.marks[symbol]

    # Funding ---------------------------------------------------------------------------
    def charge_funding(self, symbol: str, rate: float, price: float | None = None) -> float:
        """Settle one funding payment with the simulator's rule (``units * price * rate``: longs pay
        positive rates, shorts receive); returns what was paid."""
        units = self.state.qty.get(symbol, 0.0)
        paid = units * (price if price is not None else self.state.marks.get(symbol, 0.0)) * rate
        self.state.cash -= paid
        self.state.funding_paid += paid
        return paid

    # Internals -------------------------------------------------------------------------
    def _update_avg_price(self, symbol: str, before: float, after: float, price: float) -> None:
        if after == 0:
            self.state.avg_price.pop(symbol, None)
        elif before == 0 or before * after < 0:  # opened or flipped: the new leg's price
            self.state.avg_price[symbol] = price
        elif abs(after) > abs(before):  # added to: volume-weighted
            old = self.state.avg_price.get(symbol, price)
            self.state.avg_price[symbol] = (old * abs(before) + price * (abs(after) - abs(before))) / abs(after)

    def _remember(self, intent: OrderIntent, status: str, **fields: object) -> OrderState:
        order = OrderState.model_validate(
            {
                "order_link_id": intent.order_link_id,
                "order_id": f"paper-{next(self._ids)}",
                "symbol": intent.symbol,
                "side": intent.side,
                "qty": intent.qty,
                "status": status,
                **fields,
            }
        )
        self.state.orders[intent.order_link_id] = order
        return order
