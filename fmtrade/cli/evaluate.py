"""``fmtrade evaluate``: zero-shot walk-forward evaluation of models on stored symbols."""

from __future__ import annotations

import logging
import time

import typer

from fmtrade.cli.common import JSON_OPTION, STORE_OPTION, emit_json, print_table, settings, split_csv
from fmtrade.data.closes import load_closes
from fmtrade.data.intervals import check_category, check_interval, interval_offset
from fmtrade.data.store import Store, to_utc
from fmtrade.ensemble import ENSEMBLE_NAME
from fmtrade.evaluation import ROW_KEYS, EvalParams, check_horizon, cut_windows, evaluate_symbol
from fmtrade.forecasting import RANDOM_WALK
from fmtrade.models.registry import ModelSpec, active_specs, build_forecaster, select_specs

log = logging.getLogger(__name__)


def _specs(names: list[str]) -> tuple[list[ModelSpec], list[ModelSpec]]:
    """(the requested specs: the ensemble's members, the specs scored: those plus the random
    walk, the honest anchor, added as a reference when not requested)."""
    specs = active_specs(settings())
    wanted = select_specs(specs, [n for n in names if n != ENSEMBLE_NAME] or None)
    if any(s.name == RANDOM_WALK for s in wanted):
        return wanted, wanted
    anchor = {s.name: s for s in specs}.get(RANDOM_WALK) or ModelSpec(name=RANDOM_WALK, adapter=RANDOM_WALK)
    return wanted, [*wanted, anchor]


def evaluate(
    symbols: str = typer.Option(..., "--symbols", help="Comma-separated symbols, e.g. BTCUSDT,ETHUSDT."),
    models: str = typer.Option(None, "--models", help="Comma-separated registry names (default: all enabled)."),
    context: int = typer.Option(512, "--context", help="Bars of history per forecast."),
    horizon: int = typer.Option(24, "--horizon", help="Bars forecast (and scored) per window."),
    stride: int = typer.Option(24, "--stride", help="Bars between consecutive forecast origins."),
    start: str = typer.Option(None, "--start", help="First bar a scored target may cover (UTC)."),
    end: str = typer.Option(None, "--end", help="Last bar a scored target may cover (UTC)."),
    category: str = typer.Option(None, "--category", help="linear | inverse | spot (default: data.category)."),
    interval: str = typer.Option(None, "--interval", help="Bar interval (default: data.interval)."),
    store: str = STORE_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Score every model, their ensemble and the random walk on the same walk-forward windows."""
    cfg = settings()
    category = check_category(category or cfg.data.category)
    interval = check_interval(interval or cfg.data.interval)
    params = EvalParams(context, horizon, stride, to_utc(start, "start"), to_utc(end, "end"))
    names = split_csv(symbols, "--symbols")
    members, specs = _specs(split_csv(models, "--models"))
    # Validate everything cheap before loading any model: data exist and hold at least one window.
    data_store = Store(cfg.store_uri(store))
    lookback = None if params.start is None else params.start - interval_offset(interval) * params.context
    series = {}
    for symbol in dict.fromkeys(names):
        series[symbol] = load_closes(data_store, symbol, interval, category, lookback, params.end)
        cut_windows(series[symbol], params, symbol)
    forecasters = {spec.name: build_forecaster(spec, cfg) for spec in specs}
    check_horizon(forecasters, params.horizon)
    weights = {spec.name: spec.weight for spec in members}
    rows = []
    for symbol, closes in series.items():
        began = time.perf_counter()
        rows.extend(evaluate_symbol(symbol, closes, forecasters, params, weights))
        log.info("evaluated %s in %.1fs", symbol, time.perf_counter() - began)
    if json_out:
        emit_json(rows)
        return
    print_table(rows, list(ROW_KEYS), title=f"zero-shot evaluation ({context} context, {horizon} horizon)")
    for row in rows:
        if "error" in row:
            typer.echo(f"failed: {row['symbol']} {row['model']}: {row['error']}", err=True)
