"""``fmtrade evaluate``: zero-shot walk-forward evaluation of models on stored symbols.

On a Ray cluster (``--address``, else ``RAY_ADDRESS`` or a ``cluster.address`` other than
``local``) one task per symbol scores it (:mod:`fmtrade.jobs.evaluate`, imported only then: the
CLI is the top layer); otherwise this process scores the symbols one after another, the same rows
without the start of an embedded Ray.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import pandas as pd
import typer

from fmtrade.calibration import Conformal
from fmtrade.cli.common import (
    ADDRESS_OPTION,
    CATEGORY_OPTION,
    CONTEXT_OPTION,
    HORIZON_OPTION,
    INTERVAL_OPTION,
    JSON_OPTION,
    MODELS_OPTION,
    STORE_OPTION,
    STRIDE_OPTION,
    SYMBOLS_OPTION,
    emit_json,
    market,
    print_table,
    settings,
    split_csv,
)
from fmtrade.config import Settings
from fmtrade.data.closes import load_closes
from fmtrade.data.intervals import interval_offset
from fmtrade.data.store import Store, to_utc
from fmtrade.ensemble import ENSEMBLE_NAME
from fmtrade.evaluation import ROW_KEYS, EvalParams, check_horizon, cut_windows, evaluate_symbol
from fmtrade.forecasting import RANDOM_WALK
from fmtrade.live_state import LiveState, calibrate_symbol
from fmtrade.models.registry import ModelSpec, active_specs, build_forecaster, select_specs
from fmtrade.walkforward import WalkForward

log = logging.getLogger(__name__)

CALIBRATE_OPTION = typer.Option(
    None, "--calibrate/--no-calibrate", help="Recalibrate every model (default: each registry entry's calibrate)."
)


def _specs(names: list[str]) -> list[ModelSpec]:
    """The requested specs plus the random walk, the honest anchor (added when not requested): all
    are scored and all are ensemble members (the online weights fall back to the random walk)."""
    specs = active_specs(settings())
    wanted = select_specs(specs, [n for n in names if n != ENSEMBLE_NAME] or None)
    if any(s.name == RANDOM_WALK for s in wanted):
        return wanted
    anchor = {s.name: s for s in specs}.get(RANDOM_WALK) or ModelSpec(name=RANDOM_WALK, adapter=RANDOM_WALK)
    return [*wanted, anchor]


def _ray_address(address: str | None, cfg: Settings) -> str | None:
    """The Ray cluster to evaluate on, or None to evaluate in this process (the default:
    ``cluster.address`` is ``local``)."""
    if address:
        return address
    if os.environ.get("RAY_ADDRESS"):  # a job submitted to a cluster (`fmtrade cluster submit`)
        return os.environ["RAY_ADDRESS"]
    return None if cfg.cluster.address == "local" else cfg.cluster.address


def _evaluate_here(
    series: Mapping[str, pd.Series], specs: list[ModelSpec], cfg: Settings, params: EvalParams, walk: WalkForward
) -> list[dict[str, Any]]:
    """Rows of every symbol, scored in this process with each model loaded once."""
    forecasters = {spec.name: build_forecaster(spec, cfg) for spec in specs}
    check_horizon(forecasters, params.horizon)
    rows = []
    for symbol, closes in series.items():
        began = time.perf_counter()
        rows.extend(evaluate_symbol(symbol, closes, forecasters, params, walk))
        log.info("evaluated %s in %.1fs", symbol, time.perf_counter() - began)
    return rows


def evaluate(
    symbols: str = SYMBOLS_OPTION,
    models: str = MODELS_OPTION,
    context: int = CONTEXT_OPTION,
    horizon: int = HORIZON_OPTION,
    stride: int = STRIDE_OPTION,
    start: str = typer.Option(None, "--start", help="First bar a scored target may cover (UTC)."),
    end: str = typer.Option(None, "--end", help="Last bar a scored target may cover (UTC)."),
    warmup: int = typer.Option(
        None,
        "--warmup",
        help="Unscored windows before --start that give calibration and weights a record "
        "(default: the conformal window).",
    ),
    calibrate: bool = CALIBRATE_OPTION,
    category: str = CATEGORY_OPTION,
    interval: str = INTERVAL_OPTION,
    address: str = ADDRESS_OPTION,
    store: str = STORE_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Score every model, their online-weighted ensemble and the random walk on the same walk-forward
    windows, each model's WQL against the random walk's with a 95% block-bootstrap interval (one Ray
    task per symbol with --address; in this process by default)."""
    cfg = settings()
    category, interval = market(category, interval)
    warmup = Conformal().window if warmup is None else warmup
    params = EvalParams(context, horizon, stride, to_utc(start, "start"), to_utc(end, "end"), warmup=warmup)
    names = split_csv(symbols, "--symbols")
    specs = _specs(split_csv(models, "--models"))
    # Validate everything cheap before loading any model: data exist and hold at least one window.
    data_store = Store(cfg.store_uri(store))
    bars_back = params.context + params.warmup * params.stride
    lookback = None if params.start is None else params.start - interval_offset(interval) * bars_back
    series = {}
    for symbol in dict.fromkeys(names):
        series[symbol] = load_closes(data_store, symbol, interval, category, lookback, params.end)
        cut_windows(series[symbol], params, symbol)
    walk = WalkForward.from_registry(specs, cfg, calibrate=calibrate)
    ray_address = _ray_address(address, cfg)
    if ray_address is None:
        rows = _evaluate_here(series, specs, cfg, params, walk)
    else:
        from fmtrade.jobs.evaluate import run_evaluate_job

        rows = run_evaluate_job(series, specs, cfg, params, walk, ray_address)
    if json_out:
        emit_json(rows)
        return
    print_table(rows, list(ROW_KEYS), title=f"zero-shot evaluation ({context} context, {horizon} horizon)")
    for row in rows:
        if "error" in row:
            typer.echo(f"failed: {row['symbol']} {row['model']}: {row['error']}", err=True)


def calibrate(
    symbols: str = SYMBOLS_OPTION,
    models: str = MODELS_OPTION,
    context: int = CONTEXT_OPTION,
    horizon: int = HORIZON_OPTION,
    stride: int = STRIDE_OPTION,
    windows: int = typer.Option(220, "--windows", min=1, help="Most recent walk-forward windows to learn from."),
    calibrate: bool = CALIBRATE_OPTION,
    category: str = CATEGORY_OPTION,
    interval: str = INTERVAL_OPTION,
    store: str = STORE_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Learn the live calibration state (each model's conformal shift, the ensemble's online weights)
    from each symbol's most recent windows, for `fmtrade forecast`, the served API and the agent."""
    cfg = settings()
    category, interval = market(category, interval)
    params = EvalParams(context, horizon, stride)
    specs = _specs(split_csv(models, "--models"))
    data_store = Store(cfg.store_uri(store))
    series = {s: load_closes(data_store, s, interval, category) for s in dict.fromkeys(split_csv(symbols, "--symbols"))}
    walk = WalkForward.from_registry(specs, cfg, calibrate=calibrate)
    forecasters = {spec.name: build_forecaster(spec, cfg) for spec in specs}
    path = cfg.live_state_path()
    state = LiveState.load_if_present(path) or LiveState()
    rows = []
    for symbol, closes in series.items():
        learned, failed = calibrate_symbol(symbol, closes, forecasters, params, walk, windows)
        state.symbols[symbol] = learned
        weights = learned.weights.weights(forecasters, {s.name: s.weight for s in specs})
        rows.append({"symbol": symbol, "asof": learned.asof, "models_calibrated": sorted(learned.shifts),
                     "weights": {n: round(w, 4) for n, w in weights.items() if w > 0}, "failed": failed})  # fmt: skip
    state.save(path)
    if json_out:
        emit_json({"path": str(path), "symbols": rows})
        return
    print_table(rows, ["symbol", "asof", "weights", "failed"], title=f"live calibration state {path}")
