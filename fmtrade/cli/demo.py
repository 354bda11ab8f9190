"""``fmtrade demo``: the main job end to end, offline, on an embedded local Ray.

1. data: import the real-market sample shipped in the package (``--synthetic``: synthesise a
   market instead), serve it through the Bybit-compatible replay server, sync it back through
   the real Bybit client into a store, check the copy (:mod:`fmtrade.demo`);
2. models: build the local zoo if missing: the shipped pretrained checkpoints, or with
   ``--pretrain-minutes`` seeded weights pretrained that long per model;
3. backtest: the Ray walk-forward job over the last ``--backtest-days`` of the data across the
   symbols with every zoo model, the baselines, the ensemble, the random walk and buy-and-hold;
   prints the table and writes the HTML report;
4. serve: start the Ray Serve application over the synced store, query it over HTTP for
   each symbol and print the ensemble forecast with its 80% interval.
5. agent: one trading-agent cycle at the last bar's close (rules reasoner, paper broker, the
   ensemble in-process) against the replay server over the synced store; prints the decisions
   with their reasons (journal in the work directory, not the user's).

The CLI is the top layer, so it may call the Ray layers (``fmtrade.jobs``, ``fmtrade.serve``) lazily.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import typer

from fmtrade.cli.agent import DECISION_COLUMNS, decision_rows
from fmtrade.cli.common import (
    JSON_OPTION,
    PRETRAIN_MINUTES_OPTION,
    emit_json,
    log,
    print_table,
    settings,
    split_csv,
    zoo_build_options,
)
from fmtrade.cli.data import progress_bar
from fmtrade.config import Settings
from fmtrade.demo import DemoResult


def demo(
    symbols: str = typer.Option(
        None, "--symbols", help="Comma-separated symbols (default: the sample's five; --synthetic: three)."
    ),
    synthetic: bool = typer.Option(False, "--synthetic", help="A seeded synthetic market instead of the real sample."),
    hours: int = typer.Option(4000, "--hours", min=600, help="Hourly bars per synthetic symbol."),
    seed: int = typer.Option(0, "--seed"),
    pretrain_minutes: float = PRETRAIN_MINUTES_OPTION,
    backtest_days: int = typer.Option(90, "--backtest-days", min=2, help="Days simulated at the end of the data."),
    serve_step: bool = typer.Option(True, "--serve/--no-serve", help="Run the Ray Serve step."),
    workdir: str = typer.Option(None, "--workdir", help="Keep the stores here (default: a temporary directory)."),
    out: str = typer.Option(None, "--out", help="Backtest run directory (default: <runs dir>/demo)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Real (or synthetic) market -> replay server -> Bybit client -> store -> zoo -> Ray backtest -> Ray Serve."""
    import ray

    from fmtrade.backtest.results import SUMMARY_COLUMNS
    from fmtrade.demo import INTERVAL, DemoMarket, run_demo
    from fmtrade.jobs.backtest import prepare, run_and_write
    from fmtrade.jobs.ray_runtime import start_local_ray
    from fmtrade.models.zoo import build_zoo

    cfg = settings()
    market = DemoMarket(synthetic, tuple(split_csv(symbols, "--symbols")), hours, seed)
    names, category = market.chosen(), market.category
    report: dict = {}
    with tempfile.TemporaryDirectory(prefix="fmtrade-demo-") as scratch:
        with progress_bar(not as_json) as progress:
            data = run_demo(cfg, Path(workdir or scratch), market, progress=progress)
        report["data"] = data.to_dict()
        _show(as_json, [s.to_dict() | {"bars/s": round(s.bars_per_s)} for s in data.series],
              ["symbol", "rows", "first", "last", "gaps", "bars/s", "identical"],
              f"1. data: {'synthetic' if synthetic else 'real'} market replayed via {data.replay_url} and synced back",
              )  # fmt: skip

        how = "shipped" if pretrain_minutes is None else f"pretrained {pretrain_minutes:g} min each"
        log.info("2. models: building missing zoo checkpoints (%s)", how)
        report["zoo"] = build_zoo(cfg, seed=seed, **zoo_build_options(pretrain_minutes, seed))
        _show(as_json, report["zoo"], ["name", "family", "status", "seconds"], f"2. model zoo {cfg.zoo_dir()}")

        start_local_ray()  # the backtest's; the service step starts and stops its own (see forecast_via_service)
        end = min(pd.Timestamp(s.last) for s in data.series)  # exclusive: the last stored bar ends the run
        start = end.floor("D") - pd.Timedelta(days=backtest_days)
        job = prepare(
            cfg, list(names), None, data.synced_store, category=category, interval=INTERVAL, seed=seed,
            start=start.strftime("%Y-%m-%dT%H:%M"), end=end.strftime("%Y-%m-%dT%H:%M"),
        )  # fmt: skip
        run, path = run_and_write(job, out or cfg.runs_dir() / "demo")
        report["backtest"] = {"out": str(path), "report": str(path / "report.html"), "summary": run.summary}
        period = f"{job.config.start:%Y-%m-%d} .. {job.config.end:%Y-%m-%d}"
        _show(as_json, run.summary, SUMMARY_COLUMNS, f"3. backtest {period} (report {path / 'report.html'})")
        ray.shutdown()

        if serve_step:
            from fmtrade.serve.demo import forecast_via_service, interval_rows

            docs = forecast_via_service(cfg, names, data.synced_store, horizon=24, category=category, interval=INTERVAL)
            report["forecasts"] = interval_rows(docs)
            _show(as_json, report["forecasts"], list(report["forecasts"][0]),
                  "4. served ensemble forecast, 24 h ahead: median and 80% interval")  # fmt: skip

        report["agent"] = _agent_cycle(cfg, names, category, data, Path(workdir or scratch))
        _show(as_json, decision_rows(report["agent"]["decisions"]), DECISION_COLUMNS,
              f"5. agent cycle at {report['agent']['at']}: rules reasoner, paper broker, replay server")  # fmt: skip
    if as_json:
        from fmtrade.backtest.outputs import clean

        emit_json(clean(report))


def _agent_cycle(cfg: Settings, symbols: Sequence[str], category: str, data: DemoResult, workdir: Path) -> dict:
    """One agent cycle at the close of the last stored bar, over a replay server of the synced store."""
    from fmtrade.agent.journal import Journal
    from fmtrade.agent.loop import Agent, LiveSource
    from fmtrade.agent.observe import make_forecasts
    from fmtrade.agent.paper import PaperBroker
    from fmtrade.agent.reasoners import RulesReasoner
    from fmtrade.data.bybit import BybitClient
    from fmtrade.data.replay import ReplayServer
    from fmtrade.demo import INTERVAL

    now = max(s.last for s in data.series) + pd.Timedelta(hours=1)
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(ReplayServer(data.synced_store, now=now))
        client = stack.enter_context(BybitClient.from_settings(cfg.data, server.url))
        journal = stack.enter_context(Journal(workdir / "agent" / "journal.sqlite"))
        source = LiveSource(client, category, INTERVAL)
        agent = Agent(cfg, PaperBroker.from_settings(cfg), RulesReasoner(), journal, source, symbols=symbols,
                      forecasts=make_forecasts(cfg))  # fmt: skip
        return agent.run_cycle().to_dict()


def _show(as_json: bool, rows: list[dict], columns: list[str], title: str) -> None:
    if not as_json:
        print_table(rows, columns, title=title)
