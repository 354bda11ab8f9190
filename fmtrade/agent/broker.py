"""The execution contract every broker keeps: the agent's risk layer hands it order intents, it
answers with order states and the account. ``paper`` (fmtrade.agent.paper) fills against the market
with the backtest engine's cost accounting; ``bybit`` (fmtrade.agent.bybit) sends signed v5 orders.

Idempotency is part of the contract: an intent carries a deterministic ``order_link_id`` (one per
run, cycle and symbol, :func:`order_link_id`), and placing the same id twice must never create a
second order: the broker answers with the order it already has.
"""

from __future__ import annotations

import hashlib
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

Side = Literal["Buy", "Sell"]
OrderStatus = Literal["New", "PartiallyFilled", "Filled", "Cancelled", "Rejected"]


class OrderIntent(BaseModel):
    """A market order the risk layer decided on (quantity already rounded to the instrument's step)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    symbol: str
    category: str
    side: Side
    qty: float = Field(gt=0)
    order_link_id: str = Field(min_length=1, max_length=36)  # Bybit's orderLinkId limit
    reduce_only: bool = False


class OrderState(BaseModel):
    """What the broker knows of one order (and its fill, once filled)."""

    model_config = ConfigDict(extra="forbid")

    order_link_id: str
    order_id: str
    symbol: str
    side: Side
    qty: float
    status: OrderStatus
    filled_qty: float = 0.0
    avg_price: float | None = None
    fee: float = 0.0
    reason: str | None = None  # why it was rejected, when it was


class Position(BaseModel):
    model_config = ConfigDict(extra="forbid")

    symbol: str
    qty: float  # signed: > 0 long, < 0 short
    avg_price: float
    mark_price: float

    @property
    def notional(self) -> float:
        return self.qty * self.mark_price


class Account(BaseModel):
    """Equity (cash plus marked positions) and the open positions, in the quote currency."""

    model_config = ConfigDict(extra="forbid")

    equity: float
    cash: float
    positions: dict[str, Position] = Field(default_factory=dict)

    @property
    def gross_exposure(self) -> float:
        return sum(abs(p.notional) for p in self.positions.values())


class Broker(Protocol):
    """Places market orders idempotently and reports the account."""

    name: str

    def account(self) -> Account: ...

    def place(self, intent: OrderIntent) -> OrderState:
        """Place ``intent``; an ``order_link_id`` seen before returns the existing order, never a new one."""
        ...

    def lookup(self, order_link_id: str, symbol: str) -> OrderState | None:
        """The order with this client id, or None when the broker has none."""
        ...


def order_link_id(run_id: str, cycle: int, symbol: str) -> str:
    """Deterministic client order id for (run, cycle, symbol): a retry reuses it, so it cannot double."""
    digest = hashlib.sha256(f"{run_id}|{cycle}|{symbol}".encode()).hexdigest()[:24]
    return f"fmt-{digest}"
