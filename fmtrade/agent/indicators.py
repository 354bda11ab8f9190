"""The technical state an agent observes, from closed bars, with the ``ta`` library.

RSI and SMAs come from ``ta`` (the maintained implementation traders compare against), the rest is
plain arithmetic on closes and volumes. Every value is None when the history is too short for it:
a reasoner must see "unknown", never a number computed from fewer bars than its definition needs.
Windows stated in hours (24 h volatility, 1 h / 24 h returns) are converted to bars of the series'
interval; one that is not a whole number of bars (a 1 h return on daily bars) is None.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import pandas as pd
from ta.momentum import RSIIndicator
from ta.trend import SMAIndicator

from fmtrade.agent.schemas import Indicators
from fmtrade.data.intervals import interval_timedelta

RSI_WINDOW = 14
SMA_FAST, SMA_SLOW = 20, 50
VOLUME_WINDOW = 50
TREND_FLAT_BAND = 0.001  # |sma_20 / sma_50 - 1| below this is "flat"


def bars_in(hours: float, interval: str) -> int | None:
    """How many bars of ``interval`` span ``hours``; None when that is not a whole number."""
    ratio = pd.Timedelta(hours=hours) / interval_timedelta(interval)
    return int(ratio) if ratio >= 1 and float(ratio).is_integer() else None


def _last(series: pd.Series) -> float | None:
    value = float(series.iloc[-1]) if len(series) else math.nan
    return value if math.isfinite(value) else None


def _return(close: pd.Series, bars: int | None) -> float | None:
    if bars is None or len(close) <= bars:
        return None
    return float(close.iloc[-1] / close.iloc[-1 - bars] - 1.0)


def _volatility(close: pd.Series, bars: int | None) -> float | None:
    if bars is None or bars < 2 or len(close) <= bars:
        return None
    returns = np.diff(np.log(close.to_numpy(dtype=np.float64)[-(bars + 1) :]))
    return float(np.std(returns, ddof=1))


def _volume_z(volume: pd.Series) -> float | None:
    if len(volume) < VOLUME_WINDOW:
        return None
    window = volume.to_numpy(dtype=np.float64)[-VOLUME_WINDOW:]
    std = float(np.std(window, ddof=1))
    return float((window[-1] - window.mean()) / std) if std > 0 else 0.0


def _trend(fast: float | None, slow: float | None) -> Literal["up", "down", "flat"] | None:
    if fast is None or slow is None:
        return None
    ratio = fast / slow - 1.0
    return "flat" if abs(ratio) < TREND_FLAT_BAND else ("up" if ratio > 0 else "down")


def compute_indicators(bars: pd.DataFrame, interval: str) -> Indicators:
    """Indicators at the last row of ``bars`` (closed bars, ascending, columns close and volume)."""
    close = bars["close"].astype(np.float64)
    rsi = _last(RSIIndicator(close, window=RSI_WINDOW).rsi()) if len(close) > RSI_WINDOW else None
    fast = _last(SMAIndicator(close, window=SMA_FAST).sma_indicator()) if len(close) >= SMA_FAST else None
    slow = _last(SMAIndicator(close, window=SMA_SLOW).sma_indicator()) if len(close) >= SMA_SLOW else None
    day = bars_in(24, interval)
    return Indicators(
        rsi_14=rsi,
        sma_20=fast,
        sma_50=slow,
        trend=_trend(fast, slow),
        volatility_24h=_volatility(close, day),
        return_1h=_return(close, bars_in(1, interval)),
        return_24h=_return(close, day),
        volume_z=_volume_z(bars["volume"]),
    )
