"""The parameters of one backtest run, resolved once from settings and CLI flags."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import pandas as pd

from fmtrade.config import BacktestSettings, DataSettings, Settings
from fmtrade.data.bybit import parse_time
from fmtrade.data.intervals import check_category, check_interval
from fmtrade.errors import InputError
from fmtrade.models.base import DEFAULT_QUANTILES, check_quantile_levels

STRATEGIES = ("threshold", "risk")
#: The config sections' defaults are the one source of the run parameters' defaults.
_BT = BacktestSettings()
_DATA = DataSettings()


def end_exclusive(end: pd.Timestamp) -> pd.Timestamp:
    """``--end 2023-12-31`` means the whole last day: a date without a time is inclusive."""
    return end + pd.Timedelta(days=1) if end == end.normalize() else end


@dataclass(frozen=True)
class BacktestConfig:
    """Everything that determines a run's results (with the data and the models)."""

    start: pd.Timestamp
    end: pd.Timestamp  # exclusive
    context: int = _BT.context
    horizon: int = _BT.horizon
    rebalance: int = _BT.rebalance
    interval: str = _DATA.interval
    category: str = _DATA.category
    strategy: str = _BT.strategy
    seed: int = 0
    initial_equity: float = _BT.initial_equity
    taker_fee_bps: float = _BT.taker_fee_bps
    slippage_bps: float = _BT.slippage_bps
    min_trade_notional: float = _BT.min_trade_notional
    threshold: float = _BT.threshold
    position_fraction: float = _BT.position_fraction
    target_volatility: float = _BT.target_volatility
    max_leverage: float = _BT.max_leverage
    quantile_levels: tuple[float, ...] = DEFAULT_QUANTILES
    calibrate: bool | None = None  # recalibrate every model (True/False); None: each registry entry's flag

    def __post_init__(self) -> None:
        for name in ("context", "horizon", "rebalance"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(name, f"must be a positive integer, got {value!r}")
        if self.context < 2:
            raise InputError("context", "must be at least 2 bars")
        if self.end <= self.start:
            raise InputError("end", f"{self.end} is not after start {self.start}")
        if self.strategy not in STRATEGIES:
            raise InputError("strategy", f"{self.strategy!r} is not one of {', '.join(STRATEGIES)}")
        check_interval(self.interval)
        check_category(self.category)
        object.__setattr__(self, "quantile_levels", check_quantile_levels(self.quantile_levels))

    @classmethod
    def from_settings(cls, settings: Settings, start: str | pd.Timestamp, end: str | pd.Timestamp, **overrides: Any):
        """Defaults from ``settings.backtest`` (and ``data.interval``); ``None`` overrides are ignored."""
        # Every run parameter the backtest section also holds comes from it.
        shared = {f.name for f in fields(cls)} & set(BacktestSettings.model_fields)
        base = cls(
            start=parse_time(start, "start"),
            end=end_exclusive(parse_time(end, "end")),
            interval=settings.data.interval,
            category=settings.data.category,
            **{name: getattr(settings.backtest, name) for name in shared},
        )
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})
