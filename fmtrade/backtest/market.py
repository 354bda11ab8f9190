"""One asset's bars on a regular time grid, as the backtest sees them.

Bars are reindexed onto a gap-free grid of bar open times: a missing bar is a NaN
price, so "every ``rebalance`` bars" means a fixed wall-clock step, the forecaster
sees the gap (it imputes or masks NaNs itself), and the simulator marks positions at
the last known price through it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from fmtrade.backtest.config import BacktestConfig
from fmtrade.data.intervals import interval_timedelta
from fmtrade.data.store import Store
from fmtrade.errors import DataError, InputError


@dataclass(frozen=True)
class Market:
    symbol: str
    interval: str
    timestamps: pd.DatetimeIndex  # bar open times (UTC), regular grid
    close: np.ndarray  # [N] NaN where the store has no bar
    volume: np.ndarray  # [N] NaN where the store has no bar
    funding: pd.Series | None = None  # funding_rate indexed by funding time (UTC), perpetuals only

    @property
    def bar(self) -> pd.Timedelta:
        return interval_timedelta(self.interval)

    def filled_close(self) -> np.ndarray:
        """Close carried forward over gaps: the price a position is marked at."""
        return pd.Series(self.close).ffill().to_numpy()


def make_market(symbol: str, bars: pd.DataFrame, interval: str, funding: pd.DataFrame | None = None) -> Market:
    """Build a :class:`Market` from store bars (UTC index of bar open times, a ``close`` column)."""
    if bars.empty:
        raise DataError(f"{symbol}: no bars")
    index = pd.DatetimeIndex(bars.index)
    if index.tz is None:
        raise DataError(f"{symbol}: bar timestamps must be timezone-aware (UTC)")
    step = interval_timedelta(interval)
    grid = pd.date_range(index[0], index[-1], freq=step, name="timestamp")
    if not index.isin(grid).all():
        raise DataError(f"{symbol}: bar timestamps are not aligned to the {interval} interval grid")
    frame = bars[~index.duplicated(keep="last")].reindex(grid)
    volume = frame["volume"] if "volume" in frame else pd.Series(np.nan, index=grid)
    rates = None
    if funding is not None and not funding.empty:
        rates = funding["funding_rate"].astype(float).sort_index()
        rates.index = pd.DatetimeIndex(rates.index).tz_convert("UTC")
    return Market(
        symbol=symbol,
        interval=interval,
        timestamps=grid,
        close=frame["close"].to_numpy(dtype=np.float64),
        volume=volume.to_numpy(dtype=np.float64),
        funding=rates,
    )


def load_market(store: Store, symbol: str, config: BacktestConfig) -> Market:
    """Read the bars a backtest of ``symbol`` needs (its context before ``start`` through ``end``)
    and, for perpetuals, the funding rates; fail with a clear message when the store lacks them."""
    bounds = store.bounds(symbol, config.interval, config.category)
    if bounds is None:
        raise InputError("symbols", f"{symbol}: no {config.category}/{config.interval} bars in the store {store.root}")
    step = interval_timedelta(config.interval)
    lo = config.start - step * (config.context + 1)
    hi = config.end - pd.Timedelta(1, "ns")
    if config.start > bounds[1] or config.end <= bounds[0]:
        raise InputError(
            "start", f"{symbol}: {config.start} .. {config.end} is outside the stored data ({bounds[0]} .. {bounds[1]})"
        )
    bars = store.read(symbol, config.interval, lo, hi, config.category)
    funding = None
    if config.category != "spot":
        funding = store.read_funding(symbol, config.category, config.start, hi)
    return make_market(symbol, bars, config.interval, funding)
