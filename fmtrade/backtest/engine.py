"""Batched walk-forward inference: every window of every asset for a model in large batches.

One ``Forecaster.forecast`` call per ``batch_size`` windows (the model chunks further to its
own ``max_batch_size``) instead of one call per window. Each row carries its window's seed
(:func:`fmtrade.backtest.windows.window_seed`), so a row's forecast does not depend on which
batch or worker it lands in: batched results equal the one-call-per-window loop.
:func:`walk_forward` then turns one asset's raw forecasts into the ones traded: recalibrated and
combined into the online-weighted ensemble (:mod:`fmtrade.walkforward`), each rebalance point
from the errors of points whose horizon had ended before it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fmtrade.backtest.config import BacktestConfig
from fmtrade.backtest.market import Market
from fmtrade.backtest.windows import Windows, contexts, covariates, realized
from fmtrade.calibration import Outcomes
from fmtrade.models.base import Covariates, Forecast, Forecaster
from fmtrade.walkforward import WalkForward

Progress = Callable[[int], None]


@dataclass(frozen=True)
class WindowBatch:
    """All windows of several assets, flattened in asset order, and where each asset's rows are."""

    contexts: list[np.ndarray]
    covariates: list[Covariates] | None
    seeds: list[int]
    spans: dict[str, slice]

    def __len__(self) -> int:
        return len(self.contexts)

    def rows(self, start: int, stop: int) -> WindowBatch:
        covs = self.covariates[start:stop] if self.covariates is not None else None
        return WindowBatch(self.contexts[start:stop], covs, self.seeds[start:stop], {})


def collect_windows(
    assets: Sequence[tuple[Market, Windows]], context: int, covariate_names: Sequence[str] = ()
) -> WindowBatch:
    """Flatten the windows of ``assets``; covariates only when every asset has them."""
    ctxs: list[np.ndarray] = []
    covs: list[Covariates] | None = [] if covariate_names else None
    seeds: list[int] = []
    spans: dict[str, slice] = {}
    for market, windows in assets:
        start = len(ctxs)
        ctxs.extend(contexts(market, windows, context))
        seeds.extend(int(s) for s in windows.seeds)
        spans[market.symbol] = slice(start, len(ctxs))
        if covs is not None:
            asset_covs = covariates(market, windows, context, covariate_names)
            covs = covs + asset_covs if asset_covs is not None else None
    return WindowBatch(ctxs, covs, seeds, spans)


def forecast_batched(
    model: Forecaster,
    batch: WindowBatch,
    horizon: int,
    quantile_levels: Sequence[float],
    batch_size: int = 4096,
    progress: Progress | None = None,
) -> Forecast:
    """Forecast every window of ``batch`` with ``batch_size`` rows per call.
    ``batch_size=1`` is the one-call-per-window loop (the reference the batched path must equal)."""
    parts = []
    for start in range(0, len(batch), max(1, batch_size)):
        chunk = batch.rows(start, start + batch_size)
        parts.append(model.forecast(chunk.contexts, horizon, quantile_levels, chunk.covariates, chunk.seeds))
        if progress is not None:
            progress(len(chunk))
    return Forecast.concat(parts)


def split_by_asset(forecast: Forecast, spans: dict[str, slice]) -> dict[str, Forecast]:
    return {symbol: forecast.take(np.arange(span.start, span.stop)) for symbol, span in spans.items()}


def forecast_assets(
    model: Forecaster,
    assets: Sequence[tuple[Market, Windows]],
    config: BacktestConfig,
    batch_size: int = 4096,
    progress: Progress | None = None,
) -> dict[str, Forecast]:
    """Forecasts of every window of every asset by ``model``, keyed by symbol."""
    batch = collect_windows(assets, config.context, model.covariates)
    forecast = forecast_batched(model, batch, config.horizon, config.quantile_levels, batch_size, progress)
    return split_by_asset(forecast, batch.spans)


def walk_forward(
    market: Market, windows: Windows, forecasts: Mapping[str, Forecast], config: BacktestConfig, walk: WalkForward
) -> dict[str, Forecast]:
    """One asset's forecasts as traded: ``walk`` applied with the outcomes of its rebalance points (a
    point's target is known ``horizon`` bars after it; points whose horizon runs past the span never
    inform another)."""
    outcomes = Outcomes.on_grid(windows.points, config.horizon, realized(market, windows, config.horizon))
    return walk.apply(forecasts, outcomes)
