"""``fmtrade backtest``: walk-forward backtests across assets and models on Ray.

The command is the top layer, so it may import the Ray job (``fmtrade.jobs.backtest``) lazily;
the library (``fmtrade/``) itself never imports ``jobs/``.
"""

from __future__ import annotations

import typer

from fmtrade.cli.common import (
    ADDRESS_OPTION,
    BACKTEST_END_OPTION,
    CATEGORY_OPTION,
    INTERVAL_OPTION,
    JSON_OPTION,
    STORE_OPTION,
    SYMBOLS_OPTION,
    emit_json,
    market,
    print_table,
    settings,
    split_csv,
)


def backtest(
    symbols: str = SYMBOLS_OPTION,
    models: str = typer.Option(
        None, "--models", help="Registry names and/or 'ensemble' (default: all enabled + random-walk + ensemble)."
    ),
    start: str = typer.Option(..., "--start", help="First simulated bar (date or ISO time, UTC)."),
    end: str = BACKTEST_END_OPTION,
    context: int = typer.Option(None, "--context", help="Bars each forecast sees (default: backtest.context)."),
    horizon: int = typer.Option(None, "--horizon", help="Bars forecast at each rebalance (default: backtest.horizon)."),
    rebalance: int = typer.Option(None, "--rebalance", help="Bars between rebalances (default: backtest.rebalance)."),
    strategy: str = typer.Option(None, "--strategy", help="threshold | risk (default: backtest.strategy)."),
    category: str = CATEGORY_OPTION,
    interval: str = INTERVAL_OPTION,
    seed: int = typer.Option(0, "--seed", help="Seed of every sampling model's per-window seeds."),
    calibrate: bool = typer.Option(
        None, "--calibrate/--no-calibrate", help="Recalibrate every model (default: each registry entry's calibrate)."
    ),
    out: str = typer.Option(None, "--out", help="Run directory (default: <runs dir>/backtest-...)."),
    address: str = ADDRESS_OPTION,
    store: str = STORE_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Forecast walk-forward without look-ahead, trade with costs and funding, and report."""
    from fmtrade.backtest.outputs import clean
    from fmtrade.backtest.results import SUMMARY_COLUMNS
    from fmtrade.jobs.backtest import prepare, run_and_write

    category, interval = market(category, interval)
    job = prepare(
        settings(), split_csv(symbols, "--symbols"), split_csv(models, "--models") or None, store,
        start=start, end=end, context=context, horizon=horizon, rebalance=rebalance, strategy=strategy,
        category=category, interval=interval, seed=seed, calibrate=calibrate,
    )  # fmt: skip
    run, path = run_and_write(job, out, address)
    if json_out:
        emit_json(clean(run.summary))
    else:
        cfg = job.config
        print_table(run.summary, SUMMARY_COLUMNS, title=f"backtest {cfg.start:%Y-%m-%d} .. {cfg.end:%Y-%m-%d}")
    typer.echo(f"run written to {path} (report: {path / 'report.html'})", err=True)
