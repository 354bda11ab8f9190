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
from fmtrade.errors import FmtradeError, InputError
from fmtrade.io import check_writable, writes_to
from fmtrade.jobs.ray_runtime import clear_error, get, init_ray
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


def _slot(options: PoolOptions) -> tuple[str, float]:
    """The resource an inference actor holds and how much of it."""
    return ("GPU", 1.0) if options.use_gpu else ("CPU", options.num_cpus)


def _pool_plan(options: PoolOptions, models: int) -> tuple[int, int]:
    """(actors per model, models live at once) such that every live actor fits the cluster at once:
    a pool waiting for slots held by another unfinished pool would deadlock both."""
    resource, need = _slot(options)
    slots = max(1, int(ray.cluster_resources().get(resource, 0) // need))
    actors = max(1, min(options.actors, slots))
    return actors, max(1, min(models, slots // actors))


def _outgrown(pools: Mapping[str, list], options: PoolOptions) -> bool:
    """Whether the live actors need more than the cluster now has. After a node is lost, Ray
    restarts its actors elsewhere, but while the survivors hold every slot those restarts wait
    forever (the plan filled the cluster): the driver must re-plan, Ray will not."""
    resource, need = _slot(options)
    return sum(map(len, pools.values())) * need > ray.cluster_resources().get(resource, 0)


# How long the driver waits on the pools without any result before it checks the cluster's capacity.
STALL_CHECK_S = 10.0
# Re-plans one job makes before it fails with the cause. One lost node takes two (its actors' calls
# fail, then the cluster's capacity drops a few seconds later, once the GCS marks the node dead).
MAX_REPLANS = 5


class _Pools:
    """The driver's side of inference: which models' actor pools are live, the chunk calls in
    flight, the chunks forecast so far, and the re-plan when the cluster shrinks under them."""

    def __init__(
        self,
        assets: Sequence[tuple[Market, Windows]],
        factories: Mapping[str, ModelFactory],
        config: BacktestConfig,
        options: PoolOptions,
        described: dict,
    ) -> None:
        self.assets, self.factories, self.config, self.options, self.described = (
            assets, factories, config, options, described
        )  # fmt: skip
        # @ray.remote made an ActorClass of ForecastActor; Ray's typing still sees the class.
        self.actor_cls = cast("ActorClass[ForecastActor]", ForecastActor).options(**_resources(options), **RETRIES)
        self.per_model, self.live = _pool_plan(options, len(factories))
        self.waiting = list(factories)
        self.pools: dict[str, list] = {}
        self.pending: dict = {}
        self.parts: dict[str, list] = {}
        self.spans: dict[str, dict[str, slice]] = {}
        self.replans = 0

    def fill(self) -> None:
        """Start waiting models' pools while the plan has room for them."""
        while self.waiting and len(self.pools) < self.live:
            self._start(self.waiting.pop(0))

    def _start(self, name: str) -> None:
        actors = self.pools[name] = [self.actor_cls.remote(self.factories[name]) for _ in range(self.per_model)]
        batch = collect_windows(self.assets, self.config.context, self.described[name]["covariates"])
        self.spans[name] = batch.spans
        size = self.options.chunk_size
        chunks = [batch.rows(s, s + size) for s in range(0, len(batch), size)]
        done = self.parts.setdefault(name, [None] * len(chunks))
        todo = [k for k in range(len(chunks)) if done[k] is None]
        horizon, levels = self.config.horizon, self.config.quantile_levels
        for i, k in enumerate(todo):
            ref = actors[i % self.per_model].forecast.remote(chunks[k], horizon, levels)
            self.pending[ref] = (name, k, len(chunks[k]))

    def collect(self, ref: ray.ObjectRef) -> int:
        """Keep a finished call's forecast and return its row count (0 when its actor was lost
        and the pools were re-planned); release the model's pool when its last chunk is in."""
        name, k, rows = self.pending.pop(ref)
        try:
            self.parts[name][k] = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            self.replan(f"an inference actor of {name} was lost", clear_error(exc))
            return 0
        except ray.exceptions.RayError as exc:
            raise clear_error(exc) from None
        if all(p is not None for p in self.parts[name]):
            self.release(name)
        return rows

    def stalled(self) -> None:
        """No call finished for a while: re-plan if the live pools no longer fit the cluster."""
        if _outgrown(self.pools, self.options):
            self.replan("the cluster lost capacity", FmtradeError("the cluster kept losing capacity"))

    def replan(self, cause: str, error: Exception) -> None:
        """Release the live pools and plan again for the cluster as it is now (raise ``error`` once
        the job has re-planned :data:`MAX_REPLANS` times)."""
        if self.replans == MAX_REPLANS:
            raise error from None
        self.replans += 1
        log.warning("%s: re-planning inference for %s", cause, ", ".join(self.pools))
        self.waiting[:0] = list(self.pools)
        self.close()
        self.per_model, self.live = _pool_plan(self.options, len(self.waiting))

    def release(self, name: str) -> None:
        for handle in self.pools.pop(name):
            ray.kill(handle)
        self.pending = {ref: call for ref, call in self.pending.items() if call[0] != name}

    def close(self) -> None:
        for name in list(self.pools):
            self.release(name)


def forecast_all(
    assets: Sequence[tuple[Market, Windows]],
    factories: Mapping[str, ModelFactory],
    config: BacktestConfig,
    options: PoolOptions,
    progress: Progress | None = None,
) -> dict[str, dict[str, Forecast]]:
    """``{model: {symbol: Forecast}}`` for every window of every asset, inference in actor pools.

    As many pools run side by side as the cluster holds; when a model's last chunk returns its
    actors are released and the next model's pool starts. Ray restarts an actor that dies and
    retries its call; when that cannot work (its node is gone and the call's retries are spent,
    or the cluster shrank below what the live pools hold) the live pools are released and
    re-planned for the cluster that is left: chunks already forecast are kept, the rest are
    forecast again, and since calls are pure the results are the same."""
    pools = _Pools(assets, factories, config, options, check_models(factories, config, options))
    try:
        while pools.waiting or pools.pending:
            pools.fill()
            done, _ = ray.wait(list(pools.pending), num_returns=1, timeout=STALL_CHECK_S)
            if not done:
                pools.stalled()
                continue
            rows = pools.collect(done[0])
            if progress is not None and rows:
                progress(rows)
        return {name: split_by_asset(Forecast.concat(p), pools.spans[name]) for name, p in pools.parts.items()}
    finally:
        pools.close()


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
    """Execute ``job`` with a progress bar over windows on stderr and write the run directory
    (checked writable first: a refusing destination fails before the run, not after it)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    target = out or default_out(job.settings, job.config)
    check_writable(target, "out")
    console = Console(stderr=True)
    if not console.is_terminal:
        run = execute(job, address, progress=_LogProgress(job.windows))
    else:
        columns = (TextColumn("forecasting windows"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=console) as bar:
            task = bar.add_task("windows", total=job.windows)
            run = execute(job, address, progress=lambda n: bar.advance(task, n))
    with writes_to(target, "out"):
        return run, write_run(run, target)
