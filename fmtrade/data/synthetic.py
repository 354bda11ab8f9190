"""Seeded synthetic crypto markets: hourly OHLCV for several correlated assets plus funding rates.

Offline tests, the demo and model pretraining need data with the stylised facts of
real crypto returns, not a Gaussian random walk, or models and strategies look
better (or worse) than they would on a real market. The generator combines:

* fat tails: multivariate Student-t innovations (one shared chi-square mixing
  variable, so extremes arrive together across assets, as in crypto sell-offs);
* volatility clustering: a GARCH(1,1) market variance shared by the assets;
* regime switches: a two-state Markov chain (calm / turbulent) scaling volatility
  and drift;
* jumps: rare market-wide Poisson jumps with correlated sizes;
* correlation: Cholesky factor of an equicorrelation matrix;
* funding: 8-hourly settlements (00/08/16 UTC), an AR(1) around a small positive
  premium plus a share of the trailing 8-hour return, capped like Bybit's.

Everything is drawn from one ``numpy.random.Generator(PCG64(seed))``, so a seed
reproduces the market bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from fmtrade.errors import InputError


@dataclass(frozen=True)
class SyntheticSpec:
    """Parameters of the generator (defaults give roughly 60-90% annualised volatility)."""

    hours: int = 20_000
    seed: int = 0
    start: str = "2022-01-01"
    correlation: float = 0.6
    hourly_vol: float = 0.0065
    df: float = 5.0  # Student-t degrees of freedom (> 2)
    garch_alpha: float = 0.08
    garch_beta: float = 0.90
    regime_stay: tuple[float, float] = (0.995, 0.97)  # P(stay) in calm, turbulent
    regime_vol: tuple[float, float] = (0.8, 1.8)
    regime_drift: tuple[float, float] = (0.00003, -0.0001)
    jump_prob: float = 0.002
    jump_scale: float = 0.03
    funding_base: float = 0.0001
    funding_ar: float = 0.7
    funding_noise: float = 0.00005
    funding_momentum: float = 0.005
    funding_cap: float = 0.0075
    vol_multipliers: tuple[float, ...] = field(default=(1.0, 1.3, 1.6, 1.2, 1.45))

    def check(self, n_assets: int) -> None:
        if self.hours < 2:
            raise InputError("hours", f"must be at least 2, got {self.hours}")
        if n_assets < 1:
            raise InputError("symbols", "at least one symbol is required")
        if not -1.0 / max(n_assets - 1, 1) < self.correlation < 1.0:
            raise InputError("correlation", f"{self.correlation} does not give a valid correlation matrix")
        if self.df <= 2:
            raise InputError("df", "Student-t degrees of freedom must exceed 2 for a finite variance")
        if self.garch_alpha + self.garch_beta >= 1:
            raise InputError("garch", "alpha + beta must be < 1 for a stationary variance")


@dataclass
class SyntheticMarket:
    """Bars (store columns, UTC open-time index) and funding rates per symbol, plus the regime path."""

    bars: dict[str, pd.DataFrame]
    funding: dict[str, pd.DataFrame]
    regimes: pd.Series


def synthesize(symbols: list[str], spec: SyntheticSpec | None = None) -> SyntheticMarket:
    """Generate a deterministic market for ``symbols`` (order matters: it picks each asset's parameters)."""
    spec = spec or SyntheticSpec()
    n, hours = len(symbols), spec.hours
    spec.check(n)
    if len(set(symbols)) != n:
        raise InputError("symbols", "symbols must be unique")
    rng = np.random.default_rng(spec.seed)
    try:
        start = pd.Timestamp(spec.start, tz="UTC").floor("h")
    except (ValueError, TypeError) as exc:
        raise InputError("start", f"cannot parse {spec.start!r} as a time") from exc
    index = pd.date_range(start, periods=hours, freq="h", name="timestamp")

    regimes = _regimes(rng, hours, spec.regime_stay)
    shocks = _correlated_t(rng, hours, n, spec.correlation, spec.df)
    vol_mult = np.array([spec.vol_multipliers[i % len(spec.vol_multipliers)] for i in range(n)])
    returns = _garch_returns(shocks, regimes, vol_mult * spec.hourly_vol, spec)
    # Market-wide jump events with correlated, asset-scaled sizes.
    jumps = (rng.random(hours) < spec.jump_prob)[:, None] * _correlated_normal(rng, hours, n, spec.correlation)
    returns = returns + jumps * spec.jump_scale * vol_mult

    start_prices = 10 ** rng.uniform(0, 4.5, n)
    log_close = np.log(start_prices) + np.cumsum(returns, axis=0)
    close = np.exp(log_close)
    open_ = np.vstack([start_prices, close[:-1]])
    sigma_bar = np.abs(returns).mean(axis=0) + 1e-12
    # Intrabar excursions beyond the open/close envelope, proportional to the bar's volatility.
    up = np.abs(rng.normal(0.0, 1.0, (hours, n))) * 0.5 * (np.abs(returns) + sigma_bar)
    down = np.abs(rng.normal(0.0, 1.0, (hours, n))) * 0.5 * (np.abs(returns) + sigma_bar)
    high = np.maximum(open_, close) * np.exp(up)
    low = np.minimum(open_, close) * np.exp(-down)
    # Volume rises with the size of the move (volume-volatility correlation), lognormal noise otherwise.
    base_volume = 1e7 / start_prices
    volume = base_volume * np.exp(rng.normal(0.0, 0.35, (hours, n))) * (1.0 + 2.0 * np.abs(returns) / sigma_bar)
    turnover = volume * (open_ + high + low + close) / 4.0

    bars = {}
    for i, symbol in enumerate(symbols):
        bars[symbol] = pd.DataFrame(
            {
                "open": open_[:, i],
                "high": high[:, i],
                "low": low[:, i],
                "close": close[:, i],
                "volume": volume[:, i],
                "turnover": turnover[:, i],
            },
            index=index,
        )
    funding = _funding(rng, index, np.vstack([np.log(start_prices), log_close]), symbols, spec)
    return SyntheticMarket(bars=bars, funding=funding, regimes=pd.Series(regimes, index=index, name="regime"))


def _regimes(rng: np.random.Generator, hours: int, stay: tuple[float, float]) -> np.ndarray:
    """Two-state Markov chain: 0 calm, 1 turbulent."""
    draws = rng.random(hours)
    state = np.empty(hours, dtype=np.int8)
    current = 0
    for t in range(hours):
        if draws[t] > stay[current]:
            current = 1 - current
        state[t] = current
    return state


def _correlated_normal(rng: np.random.Generator, hours: int, n: int, rho: float) -> np.ndarray:
    """Standard normal draws with equicorrelation ``rho`` (Cholesky factor of the correlation matrix)."""
    corr = np.full((n, n), rho) + np.eye(n) * (1.0 - rho)
    return rng.standard_normal((hours, n)) @ np.linalg.cholesky(corr).T


def _correlated_t(rng: np.random.Generator, hours: int, n: int, rho: float, df: float) -> np.ndarray:
    """Unit-variance multivariate Student-t shocks with equicorrelation ``rho``."""
    gauss = _correlated_normal(rng, hours, n, rho)
    mixing = np.sqrt(rng.chisquare(df, hours) / df)[:, None]
    return gauss / mixing * np.sqrt((df - 2.0) / df)


def _garch_returns(shocks: np.ndarray, regimes: np.ndarray, vol: np.ndarray, spec: SyntheticSpec) -> np.ndarray:
    """Log returns whose variance follows one GARCH(1,1) driven by the cross-asset mean squared shock.

    A shared variance keeps the realised return correlation at the target (crypto
    volatility is mostly a market-wide factor); ``vol`` scales each asset.
    """
    hours, _ = shocks.shape
    alpha, beta = spec.garch_alpha, spec.garch_beta
    scale = np.asarray(spec.regime_vol)[regimes]
    drift = np.asarray(spec.regime_drift)[regimes]
    variance = np.empty(hours)
    h = 1.0
    market_sq = (shocks**2).mean(axis=1)
    for t in range(hours):
        variance[t] = h
        h = (1.0 - alpha - beta) + alpha * h * market_sq[t] + beta * h
    return drift[:, None] + (scale * np.sqrt(variance))[:, None] * shocks * vol


def _funding(
    rng: np.random.Generator, index: pd.DatetimeIndex, log_price: np.ndarray, symbols: list[str], spec: SyntheticSpec
) -> dict[str, pd.DataFrame]:
    """8-hourly funding settlements inside the bar range, driven by the trailing 8-hour return.

    ``log_price[k]`` is the log price at the open of bar k (row 0 the start price).
    """
    settle = index[(index.hour % 8 == 0) & (index >= index[0] + pd.Timedelta(hours=8))]
    positions = index.get_indexer(settle)
    trailing = log_price[positions] - log_price[positions - 8]
    out = {}
    for i, symbol in enumerate(symbols):
        rate = np.empty(len(settle))
        level = 0.0
        for k in range(len(settle)):
            level = spec.funding_ar * level + rng.normal(0.0, spec.funding_noise)
            rate[k] = spec.funding_base + level + spec.funding_momentum * trailing[k, i]
        rates = np.clip(rate, -spec.funding_cap, spec.funding_cap)
        out[symbol] = pd.DataFrame({"funding_rate": rates}, index=settle.rename("timestamp"))
    return out
