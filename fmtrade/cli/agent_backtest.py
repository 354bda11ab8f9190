"""``fmtrade agent backtest``: the agent's own walk-forward backtest, beside buy-and-hold and the
forecast-threshold strategy (fmtrade/agent/backtest.py; the Ray job is ``fmtrade.jobs.agent_backtest``)."""

from __future__ import annotations

import typer

from fmtrade.cli.common import (
    ADDRESS_OPTION,
    BACKTEST_END_OPTION,
    CATEGORY_OPTION,
    EVENTS_OPTION,
    INTERVAL_OPTION,
    JSON_OPTION,
    REASONER_OPTION,
    STORE_OPTION,
    SYMBOLS_OPTION,
    emit_json,
    fail,
    market,
    print_table,
    settings,
    split_csv,
)


def backtest(
    symbols: str = SYMBOLS_OPTION,
    start: str = typer.Option(..., "--start", help="First decision (date or ISO time, UTC)."),
    end: str = BACKTEST_END_OPTION,
    category: str = CATEGORY_OPTION,
    interval: str = INTERVAL_OPTION,
    reasoner: str = REASONER_OPTION,
    cassette: str = typer.Option(
        None, "--cassette", help="LLM answers: recorded here on the first run, replayed on later runs (llm only)."
    ),
    every: int = typer.Option(24, "--every", help="Bars between decisions."),
    models: str = typer.Option(
        None, "--models", help="Forecast members (default: all enabled + random-walk); the ensemble is always built."
    ),
    forecast: bool = typer.Option(True, "--forecast/--no-forecast", help="Observe the walk-forward ensemble."),
    events: str = EVENTS_OPTION,
    out: str = typer.Option(None, "--out", help="Run directory (default: <runs dir>/agent-backtest-...)."),
    address: str = ADDRESS_OPTION,
    store: str = STORE_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Backtest the agent (observe -> decide -> risk -> paper) walk-forward, strictly from past data."""
    from fmtrade.backtest.outputs import clean
    from fmtrade.backtest.results import SUMMARY_COLUMNS
    from fmtrade.cli.agent import _configured
    from fmtrade.jobs.agent_backtest import prepare, run_and_write

    if every < 1:
        fail(f"--every: must be a positive number of bars, got {every}")
    category, interval = market(category, interval)
    job = prepare(
        _configured(settings(), reasoner, None), split_csv(symbols, "--symbols"), split_csv(models, "--models") or None,
        store, forecast=forecast, events=events, cassette=cassette, start=start, end=end, rebalance=every,
        category=category, interval=interval,
    )  # fmt: skip
    result, path = run_and_write(job, out, address)
    if json_out:
        emit_json(clean(result.summary))
    else:
        cfg = job.config
        print_table(result.summary, SUMMARY_COLUMNS, title=f"agent backtest {cfg.start:%Y-%m-%d} .. {cfg.end:%Y-%m-%d}")
    typer.echo(f"run written to {path} (report: {path / 'report.html'})", err=True)
