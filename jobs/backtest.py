"""Ray job: walk-forward backtests across assets and models.

Run through the CLI, ``python -m fmtrade backtest --symbols BTCUSDT,ETHUSDT --start 2023-01-01
--end 2023-12-31``: unchanged on the embedded local Ray or, submitted with
``fmtrade cluster submit -- python -m fmtrade backtest ...``, on a cluster (the store
must then be reachable from the cluster: a shared path or an object-store URI).

Layout: per model, a pool of ``backtest.inference_actors`` actors (GPU actors when
``backtest.use_gpu``; fractional CPUs otherwise so several fit on a small machine) each load
the model once and forecast large chunks of windows from every asset; then one task per asset
recalibrates the forecasts and builds the online-weighted ensemble
(:func:`fmtrade.backtest.engine.walk_forward`), runs the strategy, the simulation and the metrics,
and the driver gathers the results and writes the run directory.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, cast

import ray
from upath import UPath

from fmtrade.backtest.config import BacktestConfig
from fmtrade.backtest.engine import (
    Progress,
    WindowBatch,
    collect_windows,
    forecast_batched,
    split_by_asset,
    walk_forward,
)
from fmtrade.backtest.market import Market, load_market
from fmtrade.backtest.outputs import write_run
from fmtrade.backtest.results import AssetResult, BacktestRun, run_asset
from fmtrade.backtest.selection import ModelSelection, select_models
from fmtrade.backtest.windows import Windows, plan_windows
from fmtrade.config import Settings
from fmtrade.data.store import Store
from fmtrade.errors import InputError
from fmtrade.jobs.ray_runtime import get, init_ray
from fmtrade.models.base import Forecast, Forecaster
from fmtrade.models.registry import build_forecaster, is_available
from fmtrade.walkforward import WalkForward

if TYPE_CHECKING:
    from ray.actor import ActorClass

log = logging.getLogger(__name__)

ModelFactory = Callable[[], Forecaster]


@dataclass(frozen=True)
class PoolOptions:
    """How inference is spread: actors per model, their resources, windows per call."""

    actors: int = 1
    num_cpus: float = 0.5
    use_gpu: bool = False
    chunk_size: int = 1024

    @classmethod
    def from_settings(cls, settings: Settings) -> PoolOptions:
        bt = settings.backtest
        return cls(actors=bt.inference_actors, use_gpu=bt.use_gpu)


@ray.remote
def describe_model(factory: ModelFactory) -> dict:
    """Load a model in a short task and report its limits: every model is checked before any
    forecast, without holding a slot that the inference actors need."""
    m = factory()
    return {"name": m.name, "max_horizon": m.max_horizon, "covariates": m.covariates, "stochastic": m.stochastic}


@ray.remote
class ForecastActor:
    """Loads one model once and forecasts chunks of windows with it."""

    def __init__(self, factory: ModelFactory) -> None:
        self.model = factory()

    def forecast(self, batch: WindowBatch, horizon: int, levels: tuple[float, ...]) -> Forecast:
        return forecast_batched(self.model, batch, horizon, levels, batch_size=len(batch))


@ray.remote
def backtest_asset(
    market: Market, windows: Windows, forecasts: dict[str, Forecast], config: BacktestConfig, walk: WalkForward | None
) -> AssetResult:
    if walk is not None:
        forecasts = walk_forward(market, windows, forecasts, config, walk)
    return run_asset(market, windows, forecasts, config)


# Forecast calls are pure (the model loads in __init__, rows carry their seeds), so an actor
# killed by the memory monitor can be restarted and its call retried without changing results.
RETRIES = {"max_restarts": 2, "max_task_retries": 2}


def _resources(options: PoolOptions) -> dict:
    return {"num_gpus": 1, "num_cpus": 1} if options.use_gpu else {"num_cpus": options.num_cpus}


def check_models(factories: Mapping[str, ModelFactory], config: BacktestConfig, options: PoolOptions) -> dict:
    """Each model's limits (loading failures and a horizon beyond a model's max fail here). A load is
    CPU-bound and short, so these run a whole CPU each: fractional ones started more worker
    processes at once than a small machine starts in parallel (Ray's raylet then warns)."""
    task = describe_model.options(**_resources(replace(options, num_cpus=max(options.num_cpus, 1.0))))
    described = dict(zip(factories, get([task.remote(f) for f in factories.values()]), strict=True))
    for name, info in described.items():
        if config.horizon > info["max_horizon"]:
            raise InputError("horizon", f"{config.horizon} exceeds {name}'s max_horizon {info['max_horizon']}")
    return described


def _pool_plan(options: PoolOptions, models: int) -> tuple[int, int]:
    """(actors per model, models live at once) such that every live actor fits the cluster at once:
    a pool waiting for slots held by another unfinished pool would deadlock both."""
    resource, need = ("GPU", 1.0) if options.use_gpu else ("CPU", options.num_cpus)
    slots = max(1, int(ray.cluster_resources().get(resource, 0) // need))
    actors = max(1, min(options.actors, slots))
    return actors, max(1, min(models, slots // actors))


def forecast_all(
    assets: Sequence[tuple[Market, Windows]],
    factories: Mapping[str, ModelFactory],
    config: BacktestConfig,
    options: PoolOptions,
    progress: Progress | None = None,
) -> dict[str, dict[str, Forecast]]:
    """``{model: {symbol: Forecast}}`` for every window of every asset, inference in actor pools.

    As many pools run side by side as the cluster holds; when a model's last chunk returns its
    actors are released and the next model's pool starts."""
    described = check_models(factories, config, options)
    per_model, live = _pool_plan(options, len(factories))
    # @ray.remote made an ActorClass of ForecastActor; Ray's typing still sees the class.
    actor_cls = cast("ActorClass[ForecastActor]", ForecastActor).options(**_resources(options), **RETRIES)
    waiting = list(factories)
    pools: dict[str, list] = {}
    pending: dict = {}
    parts: dict[str, list] = {}
    spans: dict[str, dict[str, slice]] = {}

    def start(name: str) -> None:
        actors = pools[name] = [actor_cls.remote(factories[name]) for _ in range(per_model)]
        batch = collect_windows(assets, config.context, described[name]["covariates"])
        spans[name] = batch.spans
        chunks = [batch.rows(s, s + options.chunk_size) for s in range(0, len(batch), options.chunk_size)]
        parts[name] = [None] * len(chunks)
        for k, chunk in enumerate(chunks):
            ref = actors[k % per_model].forecast.remote(chunk, config.horizon, config.quantile_levels)
            pending[ref] = (name, k, len(chunk))

    try:
        while waiting or pending:
            while waiting and len(pools) < live:
                start(waiting.pop(0))
            done, _ = ray.wait(list(pending), num_returns=1)
            name, k, rows = pending.pop(done[0])
            parts[name][k] = get(done[0])
            if all(p is not None for p in parts[name]):
                for handle in pools.pop(name):
                    ray.kill(handle)
            if progress is not None:
                progress(rows)
        return {name: split_by_asset(Forecast.concat(p), spans[name]) for name, p in parts.items()}
    finally:
        for actors in pools.values():
            for handle in actors:
                ray.kill(handle)


def run_backtest(
    markets: Mapping[str, Market],
    factories: Mapping[str, ModelFactory],
    config: BacktestConfig,
    *,
    walk: WalkForward | None = None,
    options: PoolOptions = PoolOptions(),
    progress: Progress | None = None,
) -> BacktestRun:
    """Forecast, trade and score every asset with every model, recalibrated and with the ensemble as
    ``walk`` says (None: the raw forecasts, no ensemble). Ray must be initialised (:func:`init_ray`)."""
    assets = [(market, plan_windows(market, config)) for market in markets.values()]
    forecasts = forecast_all(assets, factories, config, options, progress)
    tasks = [
        backtest_asset.remote(market, windows, {m: fc[market.symbol] for m, fc in forecasts.items()}, config, walk)
        for market, windows in assets
    ]
    results: list[AssetResult] = get(tasks)
    return BacktestRun(config, results)


@dataclass(frozen=True)
class Job:
    """A validated backtest, ready to run: every bad input has failed by now."""

    config: BacktestConfig
    markets: dict[str, Market]
    selection: ModelSelection
    settings: Settings

    @property
    def windows(self) -> int:
        return sum(len(plan_windows(m, self.config)) for m in self.markets.values()) * len(self.selection.specs)

    def factories(self) -> dict[str, ModelFactory]:
        return {s.name: functools.partial(build_forecaster, s, self.settings) for s in self.selection.specs}


def prepare(
    settings: Settings, symbols: Sequence[str], models: Sequence[str] | None, store: str | None = None, **overrides
) -> Job:
    """Resolve and validate a backtest (symbols, range, context, models) without running anything."""
    if not symbols:
        raise InputError("symbols", "at least one symbol is required")
    config = BacktestConfig.from_settings(settings, **overrides)
    selection = select_models(settings, models)
    missing = [s.name for s in selection.specs if not is_available(s, settings)]
    if missing:
        raise InputError(
            "models", f"no checkpoint for {', '.join(missing)} (build the local zoo: `fmtrade models build`)"
        )
    data = Store(settings.store_uri(store))
    markets = {s: load_market(data, s, config) for s in dict.fromkeys(symbols)}
    for market in markets.values():
        plan_windows(market, config)
    return Job(config, markets, selection, settings)


def execute(job: Job, address: str | None = None, progress: Progress | None = None) -> BacktestRun:
    """Run a prepared job on Ray (``address``: see :func:`init_ray`; default ``cluster.address``)."""
    init_ray(address or job.settings.cluster.address, job.settings.cluster.num_cpus)
    return run_backtest(
        job.markets,
        job.factories(),
        job.config,
        walk=WalkForward.from_registry(
            job.selection.specs, job.settings, ensemble=job.selection.ensemble, calibrate=job.config.calibrate
        ),
        options=PoolOptions.from_settings(job.settings),
        progress=progress,
    )


def default_out(settings: Settings, config: BacktestConfig) -> Path:
    return settings.runs_dir() / f"backtest-{config.start:%Y%m%d}-{config.end:%Y%m%d}-{config.strategy}-s{config.seed}"


class _LogProgress:
    """Progress as log lines every 10% when stderr is not a terminal (``ray job submit`` logs)."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.next = total, 0, 0.1

    def __call__(self, rows: int) -> None:
        self.done += rows
        if self.done >= self.next * self.total:
            log.info("forecast %d/%d windows", self.done, self.total)
            self.next = (self.done / self.total // 0.1 + 1) * 0.1


def run_and_write(job: Job, out: str | Path | None = None, address: str | None = None) -> tuple[BacktestRun, UPath]:
    """Execute ``job`` with a progress bar over windows on stderr and write the run directory."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    if not console.is_terminal:
        run = execute(job, address, progress=_LogProgress(job.windows))
    else:
        columns = (TextColumn("forecasting windows"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=console) as bar:
            task = bar.add_task("windows", total=job.windows)
            run = execute(job, address, progress=lambda n: bar.advance(task, n))
    return run, write_run(run, out or default_out(job.settings, job.config))
