"""``fmtrade forecast``: forecast one symbol from the local store with every model and the ensemble."""

from __future__ import annotations

import typer

from fmtrade.cli.common import (
    CATEGORY_OPTION,
    CONTEXT_OPTION,
    HORIZON_OPTION,
    INTERVAL_OPTION,
    JSON_OPTION,
    MODELS_OPTION,
    STORE_OPTION,
    SYMBOL_OPTION,
    emit_json,
    market,
    print_table,
    settings,
    split_csv,
    split_numbers,
)
from fmtrade.client import forecast_remote
from fmtrade.data.closes import load_closes
from fmtrade.data.store import Store
from fmtrade.ensemble import ENSEMBLE_NAME
from fmtrade.errors import InputError
from fmtrade.forecasting import forecast_symbol, load_models
from fmtrade.live_state import LiveState
from fmtrade.models.base import check_quantile_levels
from fmtrade.models.registry import active_specs, select_specs


def parse_quantiles(value: str) -> tuple[float, ...]:
    return check_quantile_levels(split_numbers(value, "quantiles", float))


def forecast(
    symbol: str = SYMBOL_OPTION,
    category: str = CATEGORY_OPTION,
    interval: str = INTERVAL_OPTION,
    horizon: int = HORIZON_OPTION,
    models: str = MODELS_OPTION,
    quantiles: str = typer.Option("0.1,0.5,0.9", "--quantiles", help="Comma-separated quantile levels."),
    context: int = CONTEXT_OPTION,
    store: str = STORE_OPTION,
    url: str = typer.Option(None, "--url", help="Query a running `fmtrade serve` API instead of local models."),
    raw: bool = typer.Option(
        False, "--raw", help="Ignore the live calibration state: raw quantiles, registry weights."
    ),
    json_out: bool = JSON_OPTION,
) -> None:
    """Forecast the bars after the last stored bar with each model and their weighted ensemble."""
    cfg = settings()
    category, interval = market(category, interval)
    levels = parse_quantiles(quantiles)
    if horizon < 1:
        raise InputError("horizon", f"must be a positive number of bars, got {horizon}")
    if context < 2:
        raise InputError("context", f"must be at least 2 bars, got {context}")
    if url:
        doc = forecast_remote(
            url, symbol, category=category, interval=interval, horizon=horizon, quantiles=levels,
            models=split_csv(models, "--models") or None, context_length=context,
        )  # fmt: skip
        if json_out:
            emit_json(doc)
        else:
            _print(doc)
        return
    specs = select_specs(active_specs(cfg), split_csv(models, "--models") or None)
    closes = load_closes(Store(cfg.store_uri(store)), symbol, interval, category)
    if len(closes) < context:
        raise InputError("context", f"{context} bars requested but only {len(closes)} are stored for {symbol}")
    loaded, failed = load_models(specs, cfg)
    weights = {s.name: s.weight for s in specs}
    state = None if raw else LiveState.load_if_present(cfg.live_state_path())
    doc = forecast_symbol(symbol, closes, loaded, weights, interval, horizon, levels, context, failed, state=state)
    if json_out:
        emit_json(doc)
        return
    _print(doc)


def _print(doc: dict) -> None:
    rows = []
    for name, fc in [*doc["models"].items(), (ENSEMBLE_NAME, doc[ENSEMBLE_NAME])]:
        q = fc["quantiles"]
        lo, hi = next(iter(q)), list(q)[-1]
        rows.append(
            {
                "model": name,
                "weight": doc["weights"].get(name),
                "mean[+1]": fc["mean"][0],
                f"mean[+{doc['horizon']}]": fc["mean"][-1],
                f"q{lo}[+{doc['horizon']}]": q[lo][-1],
                f"q{hi}[+{doc['horizon']}]": q[hi][-1],
            }
        )
    print_table(rows, list(rows[0]), title=f"{doc['symbol']} forecast to {doc['timestamps'][-1]}")
    for name, reason in doc["failed"].items():
        typer.echo(f"failed: {name}: {reason}", err=True)
