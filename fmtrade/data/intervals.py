"""Bybit's bar intervals and categories, and how long a bar lasts."""

from __future__ import annotations

import pandas as pd

from fmtrade.errors import InputError

CATEGORIES: tuple[str, ...] = ("linear", "inverse", "spot")
BYBIT_INTERVALS: tuple[str, ...] = ("1", "3", "5", "15", "30", "60", "120", "240", "360", "720", "D", "W", "M")

_FIXED = {"D": pd.Timedelta(days=1), "W": pd.Timedelta(weeks=1)}


def check_interval(interval: str, field: str = "interval") -> str:
    value = str(interval)
    if value not in BYBIT_INTERVALS:
        raise InputError(field, f"{value!r} is not a Bybit interval ({' '.join(BYBIT_INTERVALS)})")
    return value


def check_category(category: str, field: str = "category") -> str:
    if category not in CATEGORIES:
        raise InputError(field, f"{category!r} is not a Bybit category ({', '.join(CATEGORIES)})")
    return category


def interval_offset(interval: str) -> pd.DateOffset | pd.Timedelta:
    """Length of one bar. Monthly bars start on the 1st, so 'M' is a calendar offset."""
    interval = check_interval(interval)
    if interval == "M":
        return pd.offsets.MonthBegin(1)
    return _FIXED.get(interval, pd.Timedelta(minutes=int(interval) if interval.isdigit() else 0))


def interval_timedelta(interval: str) -> pd.Timedelta:
    """Fixed bar length; raises for 'M', whose length varies (use interval_offset)."""
    offset = interval_offset(interval)
    if not isinstance(offset, pd.Timedelta):
        raise InputError("interval", "monthly bars have no fixed length")
    return offset


def interval_ms(interval: str) -> int:
    return int(interval_timedelta(interval) / pd.Timedelta(milliseconds=1))


def bars_per_year(interval: str) -> float:
    """Annualisation factor for a 24/7 market (24*365 for hourly bars)."""
    if check_interval(interval) == "M":
        return 12.0
    return pd.Timedelta(days=365) / interval_timedelta(interval)
