"""``fmtrade data``: sync bars from Bybit, import files or the shipped sample, inspect the store, synthesise
markets, replay."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict

import typer

from fmtrade.cli.common import (
    BASE_URL_OPTION,
    CATEGORY_OPTION,
    INTERVAL_OPTION,
    JSON_OPTION,
    STORE_OPTION,
    SYMBOL_OPTION,
    SYMBOLS_OPTION,
    emit_json,
    fail,
    market,
    print_table,
    settings,
    split_csv,
)
from fmtrade.data.store import Progress, Store, iso, require_bars, to_utc

app = typer.Typer(help="Market data: sync, import, sample, show, verify, synth, replay.", no_args_is_help=True)


def open_store(store: str | None) -> Store:
    return Store(settings().store_uri(store))


@contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Progress | None]:
    """A rich progress bar on stderr, one task per symbol; yields the callback :meth:`Store.sync` expects."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

    tasks: dict[str, TaskID] = {}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:

        def update(symbol: str, done: int, expected: int) -> None:
            if symbol not in tasks:
                tasks[symbol] = bar.add_task(symbol, total=max(expected, 1))
            bar.update(tasks[symbol], completed=min(done, expected), total=max(expected, 1))

        yield update


@app.command()
def sync(
    symbols: str = SYMBOLS_OPTION,
    interval: str = INTERVAL_OPTION,
    category: str = CATEGORY_OPTION,
    start: str = typer.Option(..., "--start", help="First bar to hold (ISO date/time, UTC)."),
    end: str = typer.Option(None, "--end", help="Last bar to hold (default: the last closed bar)."),
    base_url: str = BASE_URL_OPTION,
    no_funding: bool = typer.Option(False, "--no-funding", help="Skip funding rates (linear/inverse)."),
    open_interest: str = typer.Option(None, "--open-interest", help="Also sync open interest: 5min ... 1h 4h 1d."),
    store: str = STORE_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Fetch only the missing bars (and funding) for each symbol, committing page by page."""
    from fmtrade.data.bybit import BybitClient

    cfg = settings()
    names = split_csv(symbols, "--symbols")
    category, interval = market(category, interval)
    lo, hi = to_utc(start, "--start"), to_utc(end, "--end")
    if hi is not None and hi < lo:
        fail(f"--end: {end} is before --start {start}")
    st = open_store(store)
    with BybitClient.from_settings(cfg.data, base_url) as client, progress_bar() as progress:
        report = st.sync(
            client,
            category,
            names,
            interval,
            lo,
            hi,
            funding=not no_funding,
            open_interest=open_interest,
            progress=progress,
        )
    if as_json:
        emit_json(report.to_dict())
        return
    rows = [s.to_dict() | {"bars/s": round(s.fetched_bars / s.seconds) if s.seconds else 0} for s in report.symbols]
    print_table(
        rows,
        ["symbol", "new_bars", "new_funding", "rows", "last", "gaps", "bars/s"],
        title=f"sync {category} {interval} into {st.root}",
    )


@app.command("import")
def import_(
    path: str = typer.Argument(..., help="CSV or parquet file with timestamp, open, high, low, close, volume."),
    symbol: str = SYMBOL_OPTION,
    interval: str = INTERVAL_OPTION,
    category: str = CATEGORY_OPTION,
    store: str = STORE_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Validate a whole file, then merge it into the store; a bad row rejects the file and writes nothing."""
    from fmtrade.data.importer import import_file

    category, interval = market(category, interval)
    result = import_file(open_store(store), path, symbol, interval, category)
    if as_json:
        emit_json(result.to_dict())
    else:
        print_table(
            [{"field": k, "value": v} for k, v in result.to_dict().items()], ["field", "value"], title="imported"
        )


@app.command()
def sample(
    symbols: str = typer.Option(None, "--symbols", help="Comma-separated sample symbols (default: all five)."),
    store: str = STORE_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Import the real-market sample shipped in the package (Binance spot hourly bars of BTC, ETH, SOL,
    BNB and XRP against USDT, 2021-04..2023-12) as category spot, interval 60."""
    from fmtrade.data.sample import import_sample

    results = import_sample(open_store(store), split_csv(symbols, "--symbols") or None)
    rows = [result.to_dict() for result in results]
    if as_json:
        emit_json(rows)
    else:
        print_table(
            rows, ["symbol", "category", "interval", "rows", "new_bars", "first", "last"], title="sample imported"
        )


@app.command()
def show(
    symbol: str = SYMBOL_OPTION,
    interval: str = INTERVAL_OPTION,
    category: str = CATEGORY_OPTION,
    store: str = STORE_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Rows, first and last bar, and every gap (run of missing bars) of one stored series."""
    category, interval = market(category, interval)
    st = open_store(store)
    bars = require_bars(st, symbol, interval, category)
    gaps = [g.to_dict() for g in st.gaps(symbol, interval, category)]
    doc = {
        "symbol": symbol, "category": category, "interval": interval, "rows": len(bars),
        "first": iso(bars.index[0]), "last": iso(bars.index[-1]),
        "missing_bars": sum(g["missing_bars"] for g in gaps), "gaps": gaps,
    }  # fmt: skip
    if as_json:
        emit_json(doc)
        return
    summary = [{"field": key, "value": value} for key, value in doc.items() if key != "gaps"]
    print_table(summary, ["field", "value"], title=st.root)
    if gaps:
        print_table(gaps, ["start", "end", "missing_bars"], title=f"{len(gaps)} gap(s)")


@app.command()
def verify(store: str = STORE_OPTION, as_json: bool = JSON_OPTION) -> None:
    """Check every file of the store (readable, schema, increasing unique timestamps within its period,
    no NaN prices); exit 1 listing each bad file and how to restore it."""
    st = open_store(store)
    checks = st.verify()
    bad = [asdict(c) for c in checks if not c.ok]
    doc = {"store": st.root, "files": len(checks), "rows": sum(c.rows for c in checks), "ok": not bad, "bad": bad}
    if as_json:
        emit_json(doc)
    else:  # whole lines, not a table: the paths and commands must survive copy and paste
        for item in bad:
            typer.echo(f"BAD {item['path']}\n  problem: {item['problem']}\n  fix: {item['fix']}")
        verdict = f"{len(bad)} of {len(checks)} file(s) bad" if bad else "every file sound"
        typer.echo(f"{st.root}: {len(checks)} file(s), {doc['rows']} row(s) checked; {verdict}")
    if bad:
        raise typer.Exit(1)


@app.command()
def synth(
    symbols: str = typer.Option("SYNA,SYNB,SYNC", "--symbols", help="Comma-separated symbols to synthesise."),
    hours: int = typer.Option(20_000, "--hours", min=2),
    seed: int = typer.Option(0, "--seed"),
    start: str = typer.Option("2022-01-01", "--start", help="Open time of the first bar (UTC)."),
    correlation: float = typer.Option(0.6, "--correlation", help="Target correlation between assets."),
    category: str = CATEGORY_OPTION,
    store: str = STORE_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Write a seeded synthetic market (hourly bars, plus funding for linear/inverse) into the store."""
    from fmtrade.data.synthetic import SyntheticSpec, synthesize

    category, _ = market(category, None)
    names = split_csv(symbols, "--symbols")
    synthetic = synthesize(names, SyntheticSpec(hours=hours, seed=seed, start=start, correlation=correlation))
    st = open_store(store)
    rows = []
    for name in names:
        bars = synthetic.bars[name]
        new = st.write_bars(category, name, "60", bars)
        funding = st.write_funding(category, name, synthetic.funding[name]) if category != "spot" else 0
        rows.append(
            {
                "symbol": name,
                "category": category,
                "interval": "60",
                "rows": len(bars),
                "new_bars": new,
                "funding_rows": funding,
                "first": iso(bars.index[0]),
                "last": iso(bars.index[-1]),
            }
        )
    if as_json:
        emit_json({"store": st.root, "seed": seed, "series": rows})
    else:
        print_table(
            rows,
            ["symbol", "category", "rows", "new_bars", "funding_rows", "first", "last"],
            title=f"synthetic market (seed {seed}) in {st.root}",
        )


@app.command()
def replay(
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8099, "--port", min=0, max=65535),
    now: str = typer.Option(None, "--now", help="Start the replay clock here (ISO time, UTC; default: wall clock)."),
    speed: float = typer.Option(
        0.0, "--speed", min=0, help="Replay seconds per wall second from --now (3600: an hour a second; 0: frozen)."
    ),
    private: bool = typer.Option(
        False,
        "--private",
        help="Also serve the signed order/position/wallet endpoints for the key pair in "
        "FMTRADE_AGENT__API_KEY / FMTRADE_AGENT__API_SECRET (a simulated account).",
    ),
    balance: float = typer.Option(100_000.0, "--balance", min=0, help="USDT the simulated account starts with."),
    store: str = STORE_OPTION,
) -> None:
    """Serve the store over a Bybit-v5-compatible HTTP API until interrupted."""
    from fmtrade.data.replay import ReplayServer

    st = open_store(store)
    accounts = None
    if private:
        agent = settings().agent
        if agent.api_key is None or agent.api_secret is None:
            fail("--private: set FMTRADE_AGENT__API_KEY and FMTRADE_AGENT__API_SECRET for the simulated account")
        accounts = {agent.api_key.get_secret_value(): agent.api_secret.get_secret_value()}
    server = ReplayServer(st, host=host, port=port, now=now, speed=speed, accounts=accounts, initial_balance=balance)
    clock = f", clock from {server.now.isoformat()} at {speed:g}x" if server.now is not None else ""
    typer.echo(f"serving {st.root} as Bybit v5 on {server.url}{clock} (Ctrl-C to stop)", err=True)
    server.run()
