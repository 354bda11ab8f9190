"""Small real forecasters and markets for the backtest tests (not mocks: each implements the
Forecaster interface fully, with a deterministic and a sampling forecast rule)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import norm

from fmtrade.backtest.market import Market, make_market
from fmtrade.data.synthetic import SyntheticSpec, synthesize
from fmtrade.models.base import Forecaster


def _padded_log_returns(contexts: list[np.ndarray], lookback: int) -> np.ndarray:
    """[b, lookback] log returns of each context's tail, NaN-padded on the left."""
    out = np.full((len(contexts), lookback), np.nan)
    for row, ctx in enumerate(contexts):
        r = np.diff(np.log(ctx[-(lookback + 1) :]))
        out[row, lookback - r.size :] = r
    return out


class DriftForecaster(Forecaster):
    """Deterministic: lognormal drift and volatility estimated from the last ``lookback`` bars."""

    family = "test"

    def __init__(self, name: str = "drift", lookback: int = 48, max_batch_size: int = 256, max_horizon: int = 1024):
        self.name = name
        self.lookback = lookback
        self.max_batch_size = max_batch_size
        self.max_horizon = max_horizon

    def _predict(self, contexts, horizon, quantile_levels, covariates, seeds):
        r = _padded_log_returns(contexts, self.lookback)
        mu = np.nanmean(r, axis=1)[:, None]
        sd = np.nan_to_num(np.nanstd(r, axis=1), nan=0.0)[:, None] + 1e-6
        last = np.array([ctx[np.isfinite(ctx)][-1] for ctx in contexts])[:, None]
        steps = np.arange(1, horizon + 1)[None, :]
        mean = last * np.exp(mu * steps + 0.5 * sd**2 * steps)
        z = norm.ppf(quantile_levels)[None, None, :]
        quantiles = last[..., None] * np.exp((mu * steps)[..., None] + z * (sd * np.sqrt(steps))[..., None])
        return mean, quantiles


class BootstrapForecaster(Forecaster):
    """Sampling: resamples the context's recent log returns into ``paths`` price paths,
    seeded per row (so a row's forecast is independent of its batch)."""

    family = "test"
    stochastic = True

    def __init__(self, name: str = "bootstrap", lookback: int = 96, paths: int = 64) -> None:
        self.name = name
        self.lookback = lookback
        self.paths = paths

    def _predict(self, contexts, horizon, quantile_levels, covariates, seeds):
        means, quants = [], []
        for ctx, seed in zip(contexts, seeds, strict=True):
            r = np.diff(np.log(ctx[-(self.lookback + 1) :]))
            r = r[np.isfinite(r)]
            draws = np.random.default_rng(seed).choice(r, size=(self.paths, horizon))
            paths = ctx[np.isfinite(ctx)][-1] * np.exp(np.cumsum(draws, axis=1))
            means.append(paths.mean(axis=0))
            quants.append(np.quantile(paths, quantile_levels, axis=0).T)
        return np.stack(means), np.stack(quants)


def synthetic_markets(
    symbols=("AAA", "BBB"), hours: int = 2000, seed: int = 3, funding: bool = True
) -> dict[str, Market]:
    synth = synthesize(list(symbols), SyntheticSpec(hours=hours, seed=seed, start="2023-01-01"))
    return {s: make_market(s, synth.bars[s], "60", synth.funding[s] if funding else None) for s in symbols}


def perturb_after(market: Market, cutoff: pd.Timestamp, seed: int = 9) -> Market:
    """The same market with every bar (and funding rate) after ``cutoff`` replaced by noise."""
    rng = np.random.default_rng(seed)
    after = np.asarray(market.timestamps > cutoff)
    close = market.close.copy()
    close[after] *= np.exp(rng.normal(0, 0.05, after.sum()))
    volume = market.volume.copy()
    volume[after] *= 3.0
    funding = market.funding.copy() if market.funding is not None else None
    if funding is not None:
        funding[funding.index > cutoff] = 0.01
    return Market(market.symbol, market.interval, market.timestamps, close, volume, funding)
