"""Walk-forward windows: where to rebalance, what each forecast may see, and its seed.

Rebalance points are every ``rebalance`` bars from the first bar at or after ``start``.
At a point (bar ``i``, opening at ``t_i``) the model sees only bars strictly before
``i`` (``close[i - context : i]``), and the position is traded at ``close[i - 1]``,
the last price known at ``t_i``. Nothing at or after ``t_i`` reaches the forecast,
which is what makes the backtest free of look-ahead (tests perturb the future to prove it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fmtrade.backtest.config import BacktestConfig
from fmtrade.backtest.market import Market
from fmtrade.errors import InputError
from fmtrade.models.base import Covariates


def window_seed(seed: int, symbol: str, timestamp: pd.Timestamp) -> int:
    """A seed per window from (run seed, symbol, time): the same window gets the same seed
    whatever batch or worker it lands in, so sampling models reproduce bit for bit."""
    key = f"{int(seed)}|{symbol}|{pd.Timestamp(timestamp).value}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=4).digest(), "little")


@dataclass(frozen=True)
class Windows:
    """The rebalance points of one asset within the simulated span ``[first, stop)``."""

    symbol: str
    first: int  # first simulated bar
    stop: int  # one past the last simulated bar
    points: np.ndarray  # [W] bar index of each rebalance point
    timestamps: pd.DatetimeIndex  # [W] open time of each rebalance bar
    seeds: np.ndarray  # [W] per-window seeds

    def __len__(self) -> int:
        return int(self.points.size)


def plan_windows(market: Market, config: BacktestConfig) -> Windows:
    """Rebalance points of ``market`` for ``config``; bad ranges fail here, before any work."""
    ts = market.timestamps
    first_ts, last_ts = ts[0], ts[-1]
    if config.start > last_ts or config.end <= first_ts:
        raise InputError(
            "start",
            f"{market.symbol}: {config.start} .. {config.end} is outside the stored data ({first_ts} .. {last_ts})",
        )
    if config.end > last_ts + market.bar:
        raise InputError("end", f"{market.symbol}: {config.end} is after the last stored bar ({last_ts})")
    first = int(ts.searchsorted(config.start, side="left"))
    stop = int(ts.searchsorted(config.end, side="left"))
    if first < config.context:
        raise InputError(
            "context",
            f"{market.symbol}: {config.context} bars of context are needed before {ts[first]}, "
            f"but the stored data starts {first} bars earlier ({first_ts})",
        )
    points = np.arange(first, stop, config.rebalance, dtype=np.int64)
    stamps = ts[points]
    seeds = np.array([window_seed(config.seed, market.symbol, t) for t in stamps], dtype=np.int64)
    return Windows(market.symbol, first, stop, points, stamps, seeds)


def contexts(market: Market, windows: Windows, context: int) -> list[np.ndarray]:
    """The price history each forecast sees: the ``context`` bars strictly before each point."""
    return [market.close[i - context : i] for i in windows.points]


def covariates(market: Market, windows: Windows, context: int, names: Sequence[str]) -> list[Covariates] | None:
    """Past covariates aligned with :func:`contexts` for models that use them (volume only:
    funding arrives every few bars, so per-bar funding is not a covariate we can align honestly)."""
    if "volume" not in names or not np.isfinite(market.volume).any():
        return None
    return [{"volume": market.volume[i - context : i]} for i in windows.points]


def realized(market: Market, windows: Windows, horizon: int) -> np.ndarray:
    """Realised closes ``[W, H]`` after each point, NaN where the horizon runs past the span
    (or over a gap): used only to score forecasts, never to make them."""
    out = np.full((len(windows), horizon), np.nan)
    for row, i in enumerate(windows.points):
        end = min(i + horizon, windows.stop)
        out[row, : end - i] = market.close[i:end]
    return out
