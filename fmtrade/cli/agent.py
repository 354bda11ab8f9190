"""``fmtrade agent``: run the trading agent (observe, decide, risk, execute, journal) and read its journal.

``agent run`` builds the parts from the settings and the options (docs/AGENT.md) and runs one cycle
(``--once``, the default) or one every ``--every`` of the market's clock until Ctrl-C, which stops
after the cycle under way and prints the portfolio. ``agent journal`` prints the last cycles of a run.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
from collections.abc import Iterator
from typing import Any, get_args

import pandas as pd
import typer

from fmtrade.cli.common import (
    BASE_URL_OPTION,
    CATEGORY_OPTION,
    CONTEXT_OPTION,
    EVENTS_OPTION,
    HORIZON_OPTION,
    INTERVAL_OPTION,
    JSON_OPTION,
    MODELS_OPTION,
    REASONER_OPTION,
    SYMBOLS_OPTION,
    emit_json,
    fail,
    market,
    print_table,
    settings,
    split_csv,
)
from fmtrade.config import AgentSettings, Settings
from fmtrade.errors import InputError

app = typer.Typer(help="The trading agent: run it (paper or Bybit) and audit its journal.", no_args_is_help=True)

DECISION_COLUMNS = ["symbol", "action", "confidence", "size", "reasons"]


def _every(value: str | None, once: bool) -> pd.Timedelta | None:
    if value is None:
        return None
    if once:
        fail("--every: cannot be combined with --once")
    try:
        every = pd.Timedelta(value)
    except ValueError:
        raise InputError("--every", f"{value!r} is not a duration (e.g. 15min, 1h, 4h)") from None
    if every <= pd.Timedelta(0):
        raise InputError("--every", f"must be positive, got {value!r}")
    return every


def _configured(cfg: Settings, reasoner: str | None, broker: str | None) -> Settings:
    """The settings with ``--reasoner`` / ``--broker`` applied; a value the settings do not allow is refused."""
    update = {}
    for field, value in (("reasoner", reasoner), ("broker", broker)):
        if value is None:
            continue
        allowed = get_args(AgentSettings.model_fields[field].annotation)
        if value not in allowed:
            raise InputError(f"--{field}", f"expected one of {', '.join(allowed)}, got {value!r}")
        update[field] = value
    return cfg.model_copy(update={"agent": cfg.agent.model_copy(update=update)}) if update else cfg


def _broker(cfg: Settings, journal: Any, run_id: str | None, base_url: str | None, live: bool, category: str) -> Any:
    if cfg.agent.broker == "bybit":
        from fmtrade.agent.bybit import BybitBroker

        return BybitBroker(cfg, base_url=base_url, live=live, category=category)
    if live:
        fail("--live: only with --broker bybit (the paper broker never sends an order)")
    from fmtrade.agent.paper import PaperBroker

    paper = PaperBroker.from_settings(cfg)
    saved = journal.broker_state(run_id, paper.name) if run_id else None
    if saved is not None:  # resuming: the paper account as the journal left it
        paper.restore(saved)
    return paper


def _forecasts(cfg: Settings, serve_url: str | None, models: str | None, context: int, horizon: int) -> Any:
    from fmtrade.agent.observe import make_forecasts

    if context < 2 or horizon < 1:
        raise InputError("--context" if context < 2 else "--horizon", "must be at least 2 (context) and 1 (horizon)")
    names = split_csv(models, "--models") or None
    if names and not serve_url:  # refuse an unknown name now, not as a forecast error in every cycle
        from fmtrade.models.registry import active_specs, select_specs

        select_specs(active_specs(cfg), names, "--models")
    return make_forecasts(cfg, serve_url, models=names, context=context, horizon=horizon)


@contextlib.contextmanager
def _ctrl_c_stops_after_the_cycle() -> Iterator[threading.Event]:
    """The first Ctrl-C sets the event (the loop ends after the cycle under way); a second one aborts."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        typer.echo("stopping after the current cycle (Ctrl-C again to abort)", err=True)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def decision_rows(decisions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d | {"reasons": "; ".join(d.get("reasoning") or [])} for d in decisions]


def _show_cycle(result: Any) -> None:
    title = f"cycle {result.cycle} at {result.at:%Y-%m-%d %H:%M} UTC (run {result.run_id})"
    print_table(decision_rows(result.decisions), DECISION_COLUMNS, title=title)
    if result.fills:
        print_table(result.fills, ["symbol", "side", "qty", "price", "fee"], title="fills")
    for error in result.errors:
        typer.echo(f"warning: {error['symbol']} {error['stage']}: {error['error']}", err=True)
    if result.stopped:
        typer.echo(f"kill switch: {result.stopped}", err=True)


def _show_portfolio(portfolio: dict[str, Any]) -> None:
    rows = [{"symbol": s} | pos for s, pos in portfolio.get("positions", {}).items()]
    p = portfolio
    title = f"portfolio: equity {p['equity']:.2f}, cash {p['cash']:.2f}, gross exposure {p['gross_exposure']:.3f}x"
    print_table(rows, ["symbol", "qty", "avg_price", "mark_price", "notional"], title=title)


def _document(results: list[Any]) -> dict[str, Any]:
    """One JSON document for the whole run (decisions, orders and fills carry their cycle)."""
    doc: dict[str, Any] = {"run_id": results[0].run_id if results else None, "cycles": len(results)}
    for key in ("decisions", "orders", "fills", "clamps", "errors"):
        doc[key] = [item | {"cycle": r.cycle} for r in results for item in getattr(r, key)]
    doc["portfolio"] = results[-1].portfolio if results else {}
    doc["stopped"] = next((r.stopped for r in results if r.stopped), None)
    return doc


@app.command("run")
def run(
    symbols: str = SYMBOLS_OPTION,
    category: str = CATEGORY_OPTION,
    interval: str = INTERVAL_OPTION,
    once: bool = typer.Option(False, "--once", help="One cycle, then stop (the default without --every)."),
    every: str = typer.Option(None, "--every", help="Run a cycle every this long on the market's clock, e.g. 1h."),
    reasoner: str = REASONER_OPTION,
    broker: str = typer.Option(None, "--broker", help="paper or bybit (default: agent.broker)."),
    live: bool = typer.Option(False, "--live", help="Bybit mainnet (needs agent.confirm_live); testnet otherwise."),
    serve_url: str = typer.Option(None, "--serve-url", help="Served API for forecasts (default: in-process)."),
    forecast: bool = typer.Option(True, "--forecast/--no-forecast", help="Observe the ensemble forecast."),
    models: str = MODELS_OPTION,
    context: int = CONTEXT_OPTION,
    horizon: int = HORIZON_OPTION,
    base_url: str = BASE_URL_OPTION,
    events: str = EVENTS_OPTION,
    run_id: str = typer.Option(None, "--run-id", help="Resume this run's journal (default: a new run)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Observe -> decide -> risk -> execute -> journal, once or every --every."""
    from fmtrade.agent.events import EventFeed
    from fmtrade.agent.journal import Journal
    from fmtrade.agent.loop import Agent, LiveSource
    from fmtrade.agent.reasoners import make_reasoner
    from fmtrade.data.bybit import BybitClient

    names = split_csv(symbols, "--symbols")
    cat, ivl = market(category, interval)
    period = _every(every, once)
    cfg = _configured(settings(), reasoner, broker)
    feed = EventFeed.from_source(events) if events else None
    with contextlib.ExitStack() as stack:
        journal = stack.enter_context(Journal(cfg.agent_journal()))
        client = stack.enter_context(BybitClient.from_settings(cfg.data, base_url))
        execution = _broker(cfg, journal, run_id, base_url, live, cat)
        if hasattr(execution, "close"):
            stack.callback(execution.close)
        agent = Agent(
            cfg, execution, make_reasoner(cfg), journal, LiveSource(client, cat, ivl), symbols=names, run_id=run_id,
            forecasts=_forecasts(cfg, serve_url, models, context, horizon) if forecast else None, events=feed,
        )  # fmt: skip
        with _ctrl_c_stops_after_the_cycle() as stop:
            results = agent.run(every=period, stop=stop, on_cycle=None if as_json else _show_cycle)
    doc = _document(results)
    if as_json:
        emit_json(doc)
    else:
        _show_portfolio(doc["portfolio"])


@app.command("journal")
def journal(
    last: int = typer.Option(10, "--last", min=1, help="Show the last N cycles."),
    run_id: str = typer.Option(None, "--run-id", help="Which run (default: the latest)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Print the journal of a run: its last cycles' decisions with reasons, clamps, orders, fills and equity."""
    from fmtrade.agent.journal import Journal

    path = settings().agent_journal()
    if not path.exists():
        fail(f"journal: no journal at {path} (run `fmtrade agent run` first)")
    with Journal(path) as book:
        run = run_id or book.latest_run()
        if run is None or not book.rows("runs", run):
            fail(f"--run-id: no run {run_id!r} in {path}" if run_id else f"journal: no run in {path}")
        doc: dict[str, Any] = {"run_id": run, "journal": str(path)}
        for table in ("cycles", "decisions", "clamps", "orders", "fills", "errors", "equity", "outcomes",
                      "weight_updates"):  # fmt: skip
            doc[table] = book.rows(table, run, last_cycles=last)
    for row in doc["decisions"]:
        row["reasons"] = json.loads(row["reasons"])
    for row in doc["weight_updates"]:
        row["losses"], row["weights"] = json.loads(row["losses"]), json.loads(row["weights"])
    if as_json:
        emit_json(doc)
        return
    rows = [d | {"confidence": d["conviction"], "size": d["target_qty"], "reasons": "; ".join(d["reasons"])}
            for d in doc["decisions"]]  # fmt: skip
    print_table(rows, ["cycle", *DECISION_COLUMNS, "reasoner"], title=f"run {run}: decisions ({path})")
    print_table(doc["orders"], ["cycle", "symbol", "side", "qty", "status", "order_link_id", "exchange_id", "reason"],
                title="orders")  # fmt: skip
    print_table(doc["equity"], ["cycle", "at", "equity", "cash", "gross_exposure"], title="equity")
    if doc["weight_updates"]:
        updates = [{"cycle": u["cycle"], "symbol": u["symbol"], "model": m, "loss": loss, "weight": u["weights"][m]}
                   for u in doc["weight_updates"] for m, loss in u["losses"].items()]  # fmt: skip
        print_table(updates, ["cycle", "symbol", "model", "loss", "weight"], title="online weights (outcomes folded)")


from fmtrade.cli import agent_backtest  # noqa: E402 - registered after this module's own commands

app.command("backtest")(agent_backtest.backtest)
