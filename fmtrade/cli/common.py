"""Helpers shared by every CLI command: settings, JSON output, clean failures.

Results go to stdout (one JSON document with ``--json``); logs and progress go
to stderr. User errors exit with code 2 and one line naming the field and reason.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TextIO, TypeVar

import typer

from fmtrade.config import DataSettings, Settings, load_settings
from fmtrade.data.intervals import BYBIT_INTERVALS, CATEGORIES, check_category, check_interval
from fmtrade.errors import InputError

T = TypeVar("T")

log = logging.getLogger("fmtrade")
_DATA = DataSettings.model_fields

# Options every command declares the same way. --category and --interval default to None, which
# means the configured data.category / data.interval in every command (see `market`), so data
# written by one command is where the next one looks.
JSON_OPTION = typer.Option(False, "--json", help="Print one JSON document on stdout.")
STORE_OPTION = typer.Option(
    None,
    "--store",
    help="Store root, a path or URI (default: $FMTRADE_STORE, else data.store, else $FMTRADE_HOME/store).",
)
CATEGORY_OPTION = typer.Option(
    None,
    "--category",
    help=f"Market: {', '.join(CATEGORIES)} (default: data.category, {_DATA['category'].default} unless configured).",
)
INTERVAL_OPTION = typer.Option(
    None,
    "--interval",
    help=f"Bar interval: {' '.join(BYBIT_INTERVALS)} "
    f"(default: data.interval, {_DATA['interval'].default} unless configured).",
)
SYMBOLS_OPTION = typer.Option(..., "--symbols", help="Comma-separated symbols, e.g. BTCUSDT,ETHUSDT.")
SYMBOL_OPTION = typer.Option(..., "--symbol", help="Symbol, e.g. BTCUSDT.")
BACKTEST_END_OPTION = typer.Option(
    ..., "--end", help="Last simulated day (a date is inclusive) or ISO time (exclusive)."
)
REASONER_OPTION = typer.Option(None, "--reasoner", help="rules or llm (default: agent.reasoner).")
EVENTS_OPTION = typer.Option(
    None, "--events", help="JSONL event feed (file or URL): the LLM sees only events published before each decision."
)
BASE_URL_OPTION = typer.Option(None, "--base-url", help="Bybit or replay server URL (default data.base_url).")
MODELS_OPTION = typer.Option(None, "--models", help="Comma-separated registry names (default: all enabled).")
CONTEXT_OPTION = typer.Option(512, "--context", help="Bars of history each forecast sees.")
HORIZON_OPTION = typer.Option(24, "--horizon", help="Bars forecast per window.")
STRIDE_OPTION = typer.Option(24, "--stride", help="Bars between consecutive forecast origins.")
PRETRAIN_MINUTES_OPTION = typer.Option(
    None,
    "--pretrain-minutes",
    min=0.0,
    help="Build each zoo model from seeded weights and pretrain it this long in this process on synthetic + "
    "KernelSynth series (0: seeded random weights). Default: copy the pretrained checkpoints the package ships.",
)
ADDRESS_OPTION = typer.Option(
    None,
    "--address",
    help="Ray cluster: local (an embedded Ray), auto (the one running on this machine), "
    "host:port or ray://host:port (default: cluster.address; `serve`: the running cluster, else an embedded Ray).",
)


class CliState:
    """Per-invocation state set by the root callback."""

    config: str | None = None
    _settings: Settings | None = None
    #: Where results go; under ``--json`` everything else printed to stdout is sent to stderr.
    result_stream: TextIO | None = None

    @classmethod
    def settings(cls) -> Settings:
        if cls._settings is None:
            cls._settings = load_settings(cls.config)
        return cls._settings

    @classmethod
    def reset(cls, config: str | None) -> None:
        cls.config = config
        cls._settings = None


def settings() -> Settings:
    return CliState.settings()


def emit_json(obj: Any) -> None:
    stream = CliState.result_stream or sys.stdout
    stream.write(json.dumps(obj, default=str, allow_nan=False) + "\n")
    stream.flush()


def fail(message: str) -> NoReturn:
    """Report a usage problem in one line and exit 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def market(category: str | None, interval: str | None) -> tuple[str, str]:
    """The ``--category`` and ``--interval`` in effect, validated: as given, else ``data.category``
    and ``data.interval``."""
    data = settings().data
    return (
        check_category(category or data.category, "--category"),
        check_interval(interval or data.interval, "--interval"),
    )


def zoo_build_options(pretrain_minutes: float | None, seed: int) -> dict[str, Any]:
    """``build_zoo`` keyword arguments for ``--pretrain-minutes``: the shipped checkpoints when not given."""
    from fmtrade.training import zoo_pretrainer

    if pretrain_minutes is None:
        return {"use_shipped": True, "post_build": None}
    return {"use_shipped": False, "post_build": zoo_pretrainer(pretrain_minutes, seed)}


def split_csv(value: str | None, field: str) -> list[str]:
    """Parse a comma-separated option; empty items are an error naming the option."""
    if value is None:
        return []
    items = [item.strip() for item in value.split(",")]
    if not items or any(not item for item in items):
        fail(f"{field}: expected a comma-separated list, got {value!r}")
    return items


def split_numbers(value: str, field: str, kind: Callable[[str], T]) -> list[T]:
    """Parse a comma-separated list of numbers (``kind`` is int or float); errors name ``field``."""
    try:
        return [kind(item) for item in split_csv(value, f"--{field.replace('_', '-')}")]
    except ValueError as exc:
        raise InputError(field, f"{value!r} is not a comma-separated list of {kind.__name__} values") from exc


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # httpx logs every request at INFO; keep stderr for fmtrade's own progress unless debugging.
    logging.getLogger("httpx").setLevel(logging.DEBUG if verbose else logging.WARNING)


def print_table(rows: list[dict[str, Any]], columns: list[str], title: str | None = None) -> None:
    """Human output: ``rows`` as a rich table on stdout (floats to 4 significant digits, None as -)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        cells = (row.get(c) for c in columns)
        table.add_row(*("-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v) for v in cells))
    console = Console()
    if not console.is_terminal:  # piped: do not squeeze wide tables into 80 columns
        console = Console(width=max(console.width, 200))
    console.print(table)
