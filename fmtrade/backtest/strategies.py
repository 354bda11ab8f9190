"""Trading rules: a forecast per window in, a target position per window out.

A target is a signed fraction of equity (1.0 = fully long, -0.5 = half short, 0 = flat),
decided from the forecast alone, so a strategy can never see the future either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from fmtrade.backtest.config import BacktestConfig
from fmtrade.data.intervals import bars_per_year
from fmtrade.models.base import Forecast

#: Half the distance between the 10% and 90% quantiles of a normal is 1.2816 sigma.
Z90 = 1.2815515655446004


class Strategy(Protocol):
    @property
    def name(self) -> str: ...

    def targets(self, forecast: Forecast) -> np.ndarray:
        """Target positions ``[B]`` as signed fractions of equity."""
        ...


@dataclass(frozen=True)
class ThresholdStrategy:
    """Long (short) ``fraction`` of equity when the expected return over the horizon is above
    ``threshold`` (below ``-threshold``), flat otherwise."""

    threshold: float = 0.005
    fraction: float = 1.0
    name: str = "threshold"

    def targets(self, forecast: Forecast) -> np.ndarray:
        er = forecast.expected_return()
        return np.where(er > self.threshold, self.fraction, np.where(er < -self.threshold, -self.fraction, 0.0))


@dataclass(frozen=True)
class RiskStrategy:
    """Size by signal-to-noise, scaled to a volatility target.

    ``sigma`` is the forecast's horizon-return spread, ``(q90 - q10) / 2.563`` (the normal
    equivalent), ``conviction = clip(E[r] / sigma, -1, 1)``, and the position is
    ``clip(conviction * target_sigma / sigma, -max_leverage, max_leverage)`` with
    ``target_sigma = target_volatility * sqrt(horizon / bars_per_year)``: wide forecasts
    trade small, confident ones trade up to the cap.
    """

    target_volatility: float = 0.5
    max_leverage: float = 1.0
    periods_per_year: float = 24 * 365
    name: str = "risk"

    def targets(self, forecast: Forecast) -> np.ndarray:
        last = forecast.last_values
        spread = (forecast.quantile(0.9)[:, -1] - forecast.quantile(0.1)[:, -1]) / last
        sigma = np.maximum(spread / (2 * Z90), 1e-9)
        conviction = np.clip(forecast.expected_return() / sigma, -1.0, 1.0)
        target_sigma = self.target_volatility * np.sqrt(forecast.horizon / self.periods_per_year)
        return np.clip(conviction * target_sigma / sigma, -self.max_leverage, self.max_leverage)


def make_strategy(config: BacktestConfig) -> Strategy:
    if config.strategy == "risk":
        return RiskStrategy(config.target_volatility, config.max_leverage, bars_per_year(config.interval))
    return ThresholdStrategy(config.threshold, config.position_fraction)
