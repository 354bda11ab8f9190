"""Ray job: backtest the trading agent walk-forward across symbols (``fmtrade agent backtest``).

The forecasts are the backtest's (``jobs/backtest.py``'s actor pools forecast every rebalance point of
every symbol in large batches); then one task per symbol runs the agent's observe -> decide -> risk ->
paper loop over its points (:func:`fmtrade.agent.backtest.backtest_symbol`) beside buy-and-hold and
the forecast-threshold strategy. LLM answers: each task records into its own copy of the cassette and
the driver merges the new exchanges into ``--cassette`` once all are back. Submitted with
``fmtrade cluster submit -- python -m fmtrade agent backtest ...`` it runs unchanged on a cluster.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from upath import UPath

from fmtrade.agent.backtest import (
    AgentAsset,
    AgentBacktestRun,
    History,
    backtest_symbol,
    load_history,
    merge_cassettes,
    write_agent_run,
)
from fmtrade.agent.events import EventFeed
from fmtrade.agent.observe import LEVELS
from fmtrade.agent.schemas import Event
from fmtrade.backtest.config import BacktestConfig
from fmtrade.backtest.market import Market, load_market
from fmtrade.backtest.selection import ModelSelection, select_models
from fmtrade.backtest.windows import Windows, plan_windows
from fmtrade.config import Settings
from fmtrade.data.store import Store
from fmtrade.ensemble import ENSEMBLE_NAME
from fmtrade.errors import InputError
from fmtrade.io import check_writable, writes_to
from fmtrade.jobs.backtest import Job, PoolOptions, forecast_all
from fmtrade.jobs.ray_runtime import get, init_ray
from fmtrade.models.base import Forecast
from fmtrade.models.registry import is_available
from fmtrade.walkforward import WalkForward


@ray.remote
def agent_backtest_task(
    settings: Settings,
    history: History,
    market: Market,
    windows: Windows,
    config: BacktestConfig,
    forecasts: dict[str, Forecast] | None,
    walk: WalkForward | None,
    events: list[Event],
    cassette: str | None,
) -> AgentAsset:
    return backtest_symbol(
        settings, history, market, windows, config, forecasts, walk, events=events, cassette=cassette
    )


@dataclass(frozen=True)
class AgentJob:
    """A validated agent backtest: every bad input has failed by now."""

    settings: Settings
    config: BacktestConfig
    markets: dict[str, Market]
    histories: dict[str, History]
    selection: ModelSelection | None  # None: no forecasts (--no-forecast)
    events: list[Event] = field(default_factory=list)
    cassette: Path | None = None

    def windows(self) -> dict[str, Windows]:
        return {symbol: plan_windows(market, self.config) for symbol, market in self.markets.items()}

    def describe(self) -> dict[str, Any]:
        """agent.json: what decided and under which limits (the secrets left out)."""
        agent = self.settings.agent.model_dump(mode="json", exclude={"api_key", "api_secret", "llm_api_key"})
        return {
            "agent": agent,
            "models": self.selection.names if self.selection is not None else [],
            "every": self.config.rebalance,
            "events": len(self.events),
            "cassette": str(self.cassette) if self.cassette is not None else None,
        }


def prepare(
    settings: Settings,
    symbols: Sequence[str],
    models: Sequence[str] | None,
    store: str | None = None,
    *,
    forecast: bool = True,
    events: str | None = None,
    cassette: str | None = None,
    **overrides: Any,
) -> AgentJob:
    """Resolve and validate an agent backtest (symbols, range, models, events) without running anything."""
    if not symbols:
        raise InputError("symbols", "at least one symbol is required")
    if cassette is not None and settings.agent.reasoner != "llm":
        raise InputError("--cassette", "records LLM answers: use it with --reasoner llm")
    config = BacktestConfig.from_settings(settings, **overrides, strategy="threshold", quantile_levels=LEVELS)
    selection = None
    if forecast:
        selection = select_models(settings, [*(models or []), ENSEMBLE_NAME] if models else None)
        missing = [s.name for s in selection.specs if not is_available(s, settings)]
        if missing:
            raise InputError("models", f"no checkpoint for {', '.join(missing)} (build the local zoo)")
    data = Store(settings.store_uri(store))
    markets = {s: load_market(data, s, config) for s in dict.fromkeys(symbols)}
    for market in markets.values():
        plan_windows(market, config)
    histories = {s: load_history(data, s, config) for s in markets}
    feed = EventFeed.from_source(events) if events else EventFeed()
    path = Path(cassette).expanduser() if cassette else None
    return AgentJob(settings, config, markets, histories, selection, feed.events, path)


def execute(job: AgentJob, address: str | None = None) -> AgentBacktestRun:
    """Forecast every point on Ray, then one agent task per symbol; merge new cassette entries."""
    init_ray(address or job.settings.cluster.address, job.settings.cluster.num_cpus)
    windows = job.windows()
    forecasts: dict[str, dict[str, Forecast]] = {}
    walk = None
    if job.selection is not None:
        backtest = Job(job.config, job.markets, job.selection, job.settings)
        points = [(job.markets[s], windows[s]) for s in job.markets]
        forecasts = forecast_all(points, backtest.factories(), job.config, PoolOptions.from_settings(job.settings))
        walk = WalkForward.from_registry(job.selection.specs, job.settings, ensemble=True)
    tape = job.cassette.read_text(encoding="utf-8") if job.cassette is not None and job.cassette.exists() else None
    tasks = [
        agent_backtest_task.remote(
            job.settings,
            job.histories[s],
            market,
            windows[s],
            job.config,
            {m: fc[s] for m, fc in forecasts.items()} or None,
            walk,
            job.events,
            tape,
        )  # fmt: skip
        for s, market in job.markets.items()
    ]
    done: list[AgentAsset] = get(tasks)
    if job.cassette is not None:
        merge_cassettes(job.cassette, [a.cassette for a in done])
    return AgentBacktestRun.gather(job.config, done, job.describe())


def default_out(settings: Settings, config: BacktestConfig) -> Path:
    return settings.runs_dir() / f"agent-backtest-{config.start:%Y%m%d}-{config.end:%Y%m%d}-{settings.agent.reasoner}"


def run_and_write(
    job: AgentJob, out: str | Path | None = None, address: str | None = None
) -> tuple[AgentBacktestRun, UPath]:
    target = out or default_out(job.settings, job.config)
    check_writable(target, "out")
    result = execute(job, address)
    with writes_to(target, "out"):
        return result, write_agent_run(result, target)
