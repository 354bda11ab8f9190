"""The ``fmtrade`` command line. Each command group lives in its own module."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable

import click
import typer

from fmtrade.cli.common import CliState, setup_logging
from fmtrade.errors import FmtradeError

try:  # typer >= 0.20 vendors click: its usage errors (missing/bad option) are not click's classes
    from typer._click.exceptions import ClickException as _TyperClickException
except ImportError:  # pragma: no cover - older typer raises click's own
    _TyperClickException = click.ClickException  # type: ignore[misc,assignment]  # typer < 0.20; mypy checks the vendored click

app = typer.Typer(
    name="fmtrade",
    help="Time-series foundation models for crypto trading on Ray.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def root(
    config: str = typer.Option(None, "--config", envvar="FMTRADE_CONFIG", help="fmtrade.yaml to load."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging on stderr."),
) -> None:
    CliState.reset(config)
    setup_logging(verbose)


def _register() -> None:
    """Attach the command modules (imported here so each stays independent)."""
    from fmtrade.cli import data  # noqa: F401  (helpers add their groups below)

    app.add_typer(data.app, name="data")
    from fmtrade.cli.demo import demo

    app.command("demo")(demo)
    from fmtrade.cli import evaluate, forecast, models

    app.add_typer(models.app, name="models")
    app.command("forecast")(forecast.forecast)
    app.command("evaluate")(evaluate.evaluate)
    app.command("calibrate")(evaluate.calibrate)
    from fmtrade.cli.backtest import backtest

    app.command("backtest")(backtest)
    from fmtrade.cli import train

    app.command("pretrain")(train.pretrain)
    app.command("finetune")(train.finetune)
    from fmtrade.cli import serve

    app.add_typer(serve.app, name="serve")
    from fmtrade.cli import cluster

    app.add_typer(cluster.app, name="cluster")
    from fmtrade.cli import agent

    app.add_typer(agent.app, name="agent")


_register()


def _run(invoke: Callable[[], object]) -> object:
    """Run ``invoke`` with stdout reserved for the one JSON document: anything else written there (Ray's
    worker-log forwarding, library prints) goes to stderr, and a Ray connection the command opened
    is closed before the stream is handed back, so no late log line lands after the document."""
    CliState.result_stream = sys.stdout
    ray_was_up = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            try:
                return invoke()
            finally:
                ray = sys.modules.get("ray")
                if not ray_was_up and ray is not None and ray.is_initialized():
                    ray.shutdown()
    finally:
        CliState.result_stream = None


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors become one line on stderr and exit code 2."""
    command = typer.main.get_command(app)
    args = sys.argv[1:] if argv is None else argv

    def invoke() -> object:
        return command.main(args=args, prog_name="fmtrade", standalone_mode=False)

    try:
        # typer.Exit (raised by common.fail) is not click's Exit: typer returns its code instead.
        code = _run(invoke) if "--json" in args else invoke()
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        sys.exit(130)
    except (click.ClickException, _TyperClickException) as exc:
        exc.show()
        sys.exit(2)
    except FmtradeError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)
