"""Mark-to-market simulation of one asset under a list of target positions.

Accounting (all in quote currency):

- At a rebalance bar ``i`` the account trades to ``target * equity / price`` units at
  ``price = close[i - 1]`` (the last known price), paying ``(taker_fee_bps + slippage_bps)``
  on the traded notional; trades below ``min_trade_notional`` are skipped.
- Every bar ``j`` earns ``pnl_j = units_j * (close[j] - close[j - 1])``.
- Funding (perpetuals): a funding time ``tau`` inside bar ``j``'s span ``(open_j, open_j + bar]``
  charges ``units_j * close[j] * rate`` (longs pay positive rates, shorts receive).

So ``equity_j = equity_{j-1} + pnl_j - cost_j - funding_j`` and the final equity reconciles
exactly with ``initial + sum(pnl) - sum(costs) - sum(funding)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from fmtrade.backtest.config import BacktestConfig
from fmtrade.backtest.market import Market
from fmtrade.backtest.windows import Windows


@dataclass(frozen=True)
class Costs:
    taker_fee_bps: float = 7.5
    slippage_bps: float = 2.0
    min_trade_notional: float = 5.0

    @property
    def rate(self) -> float:
        return (self.taker_fee_bps + self.slippage_bps) / 1e4

    @classmethod
    def from_config(cls, config: BacktestConfig) -> Costs:
        return cls(config.taker_fee_bps, config.slippage_bps, config.min_trade_notional)


@dataclass(frozen=True)
class Simulation:
    """Per-bar book (``timestamp, target, units, price, position, pnl, cost, funding, equity``)
    and the trades (``timestamp, side, units, price, notional, cost``)."""

    bars: pd.DataFrame
    trades: pd.DataFrame
    initial_equity: float


@dataclass(frozen=True)
class TradeFill:
    """One executed trade: signed units, traded notional and its cost (fee plus slippage)."""

    delta: float
    notional: float
    fee: float

    @property
    def side(self) -> str:
        return "buy" if self.delta > 0 else "sell"


def trade(cash: float, units: float, goal: float, price: float, costs: Costs) -> tuple[float, float, TradeFill | None]:
    """Trade ``units`` to ``goal`` at ``price``: the one accounting step the backtest and the agent's
    paper broker share. Pays ``notional * costs.rate``; a trade below ``min_trade_notional`` is skipped
    (cash and units come back unchanged, with no fill)."""
    delta = goal - units
    notional = abs(delta) * price
    if not (notional > 0 and notional >= costs.min_trade_notional):
        return cash, units, None
    fee = notional * costs.rate
    return cash - (delta * price + fee), goal, TradeFill(delta, notional, fee)


def funding_per_bar(market: Market, first: int, stop: int) -> np.ndarray:
    """Sum of funding rates falling in each simulated bar's span ``(open, open + bar]``."""
    rates = np.zeros(stop - first)
    if market.funding is None or market.funding.empty:
        return rates
    opens = market.timestamps[first:stop]
    times = pd.DatetimeIndex(market.funding.index)
    bar_of = (opens + market.bar).searchsorted(times, side="left")
    inside = (bar_of < len(opens)) & (times > opens[np.minimum(bar_of, len(opens) - 1)])
    np.add.at(rates, bar_of[inside], market.funding.to_numpy()[inside])
    return rates


def simulate(market: Market, windows: Windows, targets: np.ndarray, costs: Costs, initial_equity: float) -> Simulation:
    """Trade ``market`` to ``targets`` (one per rebalance point of ``windows``) and mark every bar."""
    close = market.filled_close()
    first, stop = windows.first, windows.stop
    n = stop - first
    target_at = np.full(n, np.nan)
    target_at[windows.points - first] = np.asarray(targets, dtype=np.float64)
    funding_rate = funding_per_bar(market, first, stop)

    cols = {k: np.zeros(n) for k in ("units", "pnl", "cost", "funding", "equity")}
    trades: list[tuple] = []
    cash, units = float(initial_equity), 0.0
    for k in range(n):
        j = first + k
        prev = close[j - 1]
        target = target_at[k]
        if not np.isnan(target):
            equity = cash + units * prev
            goal = target * equity / prev if equity > 0 else 0.0
            cash, units, fill = trade(cash, units, goal, prev, costs)
            if fill is not None:
                cols["cost"][k] = fill.fee
                trades.append((market.timestamps[j], fill.side, fill.delta, prev, fill.notional, fill.fee))
        cols["pnl"][k] = units * (close[j] - prev)
        paid = units * close[j] * funding_rate[k]
        cash -= paid
        cols["funding"][k] = paid
        cols["units"][k] = units
        cols["equity"][k] = cash + units * close[j]

    price = close[first:stop]
    bars = pd.DataFrame(
        {
            "timestamp": market.timestamps[first:stop],
            "target": target_at,
            "units": cols["units"],
            "price": price,
            "position": cols["units"] * price / cols["equity"],
            "pnl": cols["pnl"],
            "cost": cols["cost"],
            "funding": cols["funding"],
            "equity": cols["equity"],
        }
    )
    trade_frame = pd.DataFrame(trades, columns=["timestamp", "side", "units", "price", "notional", "cost"])
    return Simulation(bars, trade_frame, float(initial_equity))


def buy_and_hold(market: Market, windows: Windows, costs: Costs, initial_equity: float) -> Simulation:
    """The benchmark: fully long from the first simulated bar, same costs and funding."""
    first_only = Windows(
        windows.symbol, windows.first, windows.stop, windows.points[:1], windows.timestamps[:1], windows.seeds[:1]
    )
    return simulate(market, first_only, np.ones(1), costs, initial_equity)
