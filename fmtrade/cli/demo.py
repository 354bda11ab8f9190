"""``fmtrade demo``: the offline end-to-end job (see :mod:`fmtrade.demo`)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import typer

from fmtrade.cli.common import JSON_OPTION, emit_json, print_table, settings, split_csv
from fmtrade.cli.data import progress_bar


def demo(
    symbols: str = typer.Option(None, "--symbols", help="Comma-separated synthetic symbols (default 3)."),
    hours: int = typer.Option(4000, "--hours", min=2, help="Hourly bars per symbol."),
    seed: int = typer.Option(0, "--seed"),
    workdir: str = typer.Option(None, "--workdir", help="Keep the stores here (default: a temporary directory)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Synthesise a market, serve it through the replay server, sync it back through the Bybit client, compare."""
    from fmtrade.demo import DEMO_SYMBOLS, run_demo

    names = tuple(split_csv(symbols, "--symbols")) or DEMO_SYMBOLS
    with tempfile.TemporaryDirectory(prefix="fmtrade-demo-") as scratch, progress_bar() as progress:
        result = run_demo(settings(), Path(workdir or scratch), symbols=names, hours=hours, seed=seed,
                          progress=progress)
    if as_json:
        emit_json(result.to_dict())
        return
    rows = [s.to_dict() | {"bars/s": round(s.bars_per_s)} for s in result.series]
    print_table(rows, ["symbol", "rows", "first", "last", "gaps", "bars/s", "identical"],
                title=f"demo: synthetic market replayed via {result.replay_url} and synced back")
