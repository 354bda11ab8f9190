"""One asset's backtest: every model's forecasts traded by the strategy, plus buy-and-hold,
turned into the frames and rows the run directory is made of."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fmtrade import metrics
from fmtrade.backtest.config import BacktestConfig
from fmtrade.backtest.market import Market
from fmtrade.backtest.simulator import Costs, Simulation, buy_and_hold, simulate
from fmtrade.backtest.strategies import make_strategy
from fmtrade.backtest.windows import Windows, contexts, realized
from fmtrade.models.base import Forecast

#: The benchmark's model name in every output.
BUY_AND_HOLD = "buy-and-hold"

SUMMARY_FIELDS = (
    "symbol", "model", "total_return", "sharpe", "sortino", "max_drawdown", "trades", "costs", "funding",
    "directional_accuracy", "mape", "wql",
)  # fmt: skip


@dataclass
class AssetResult:
    symbol: str
    positions: pd.DataFrame  # one row per bar and model
    trades: pd.DataFrame
    forecasts: pd.DataFrame  # one row per rebalance point and model
    metrics: list[dict]  # one row per model: forecast + trading metrics


@dataclass
class BacktestRun:
    config: BacktestConfig
    assets: list[AssetResult]

    def frame(self, name: str) -> pd.DataFrame:
        parts = [getattr(a, name) for a in self.assets]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()

    @property
    def metrics(self) -> list[dict]:
        return [row for a in self.assets for row in a.metrics]

    @property
    def summary(self) -> list[dict]:
        return [{k: row.get(k) for k in SUMMARY_FIELDS} for row in self.metrics]


def book_frame(sim: Simulation, symbol: str, model: str) -> pd.DataFrame:
    bars = sim.bars.copy()
    bars.insert(1, "symbol", symbol)
    bars.insert(2, "model", model)
    peak = np.maximum.accumulate(np.maximum(bars["equity"].to_numpy(), sim.initial_equity))
    bars["drawdown"] = bars["equity"] / peak - 1.0
    return bars


def trades_frame(sim: Simulation, symbol: str, model: str) -> pd.DataFrame:
    trades = sim.trades.copy()
    trades.insert(1, "symbol", symbol)
    trades.insert(2, "model", model)
    return trades


def _forecast_frame(windows: Windows, forecast: Forecast, targets: np.ndarray, truth: np.ndarray) -> pd.DataFrame:
    """One row per rebalance point: horizon-end expected return, return quantiles, and the outcome."""
    quantiles = forecast.return_quantiles()
    frame = pd.DataFrame(
        {
            "timestamp": windows.timestamps,
            "symbol": windows.symbol,
            "model": forecast.model,
            "last_price": forecast.last_values,
            "expected_return": forecast.expected_return(),
            "realized_return": truth[:, -1] / forecast.last_values - 1.0,
            "target": targets,
        }
    )
    for i, level in enumerate(forecast.quantile_levels):
        frame[f"q{level:g}"] = quantiles[:, i]
    return frame


def trading_scores(sim: Simulation, interval: str) -> dict:
    bars = sim.bars
    equity = bars["equity"].to_numpy()
    returns = equity / np.concatenate([[sim.initial_equity], equity[:-1]]) - 1.0
    scores = metrics.trading_metrics(returns, interval)
    scores.update(
        trades=len(sim.trades),
        turnover=float(sim.trades["notional"].sum() / sim.initial_equity),
        costs=float(bars["cost"].sum()),
        funding=float(bars["funding"].sum()),
        final_equity=float(equity[-1]),
    )
    return scores


def run_asset(
    market: Market, windows: Windows, forecasts: Mapping[str, Forecast], config: BacktestConfig
) -> AssetResult:
    """Trade each model's forecasts and buy-and-hold on one asset; score forecasts and trading."""
    strategy = make_strategy(config)
    costs = Costs.from_config(config)
    truth = realized(market, windows, config.horizon)
    complete = np.isfinite(truth).all(axis=1)
    insample = [c for c, ok in zip(contexts(market, windows, config.context), complete, strict=True) if ok]
    books, trades, frames, rows = [], [], [], []
    for model, forecast in forecasts.items():
        targets = strategy.targets(forecast)
        sim = simulate(market, windows, targets, costs, config.initial_equity)
        row: dict[str, object] = {"symbol": market.symbol, "model": model}
        if complete.any():
            row.update(metrics.forecast_metrics(forecast.take(np.flatnonzero(complete)), truth[complete], insample))
        row.update(trading_scores(sim, config.interval))
        books.append(book_frame(sim, market.symbol, model))
        trades.append(trades_frame(sim, market.symbol, model))
        frames.append(_forecast_frame(windows, forecast, targets, truth))
        rows.append(row)
    bench = buy_and_hold(market, windows, costs, config.initial_equity)
    rows.append({"symbol": market.symbol, "model": BUY_AND_HOLD, **trading_scores(bench, config.interval)})
    books.append(book_frame(bench, market.symbol, BUY_AND_HOLD))
    trades.append(trades_frame(bench, market.symbol, BUY_AND_HOLD))
    return AssetResult(
        market.symbol,
        pd.concat(books, ignore_index=True),
        pd.concat([t for t in trades if not t.empty] or trades[:1], ignore_index=True),  # no all-empty concat
        pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(),
        rows,
    )


# The summary table's columns, in the order a reader compares models.
SUMMARY_COLUMNS = ["symbol", "model", "total_return", "sharpe", "max_drawdown", "trades", "costs", "funding",
                   "directional_accuracy", "mape", "wql"]  # fmt: skip
