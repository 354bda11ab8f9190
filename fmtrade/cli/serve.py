"""``fmtrade serve up|status|scale|down``: run the Ray Serve forecast service (see :mod:`fmtrade.serve.runner`)."""

from __future__ import annotations

import ipaddress
import os

import typer

from fmtrade.cli.common import ADDRESS_OPTION, JSON_OPTION, CliState, emit_json, fail, settings

#: Set by ``--insecure`` for this process and the detached server it may spawn (which re-checks).
INSECURE_ENV = "FMTRADE_SERVE_INSECURE"

app = typer.Typer(help="Run the Ray Serve forecast service (HTTP API).", no_args_is_help=True)


@app.command("up")
def up(
    config: str = typer.Option(None, "--config", help="Serve config file (default: serve.config, serve/config.yaml)."),
    address: str = ADDRESS_OPTION,
    host: str = typer.Option(None, "--host", help="HTTP host (default: the file's, else serve.host)."),
    port: int = typer.Option(None, "--port", help="HTTP port (default: the file's, else serve.port)."),
    detach: bool = typer.Option(False, "--detach", help="Return once the service is ready; it keeps running."),
    ready_timeout: float = typer.Option(
        600.0, "--ready-timeout", min=1, help="Seconds to wait for every model to answer before giving up."
    ),
    insecure: bool = typer.Option(
        False,
        "--insecure",
        envvar=INSECURE_ENV,
        help="Serve on a non-loopback host without an API token (anyone who reaches the port may use it).",
    ),
    json_out: bool = JSON_OPTION,
) -> None:
    """Deploy the service and wait until every model answers; on an embedded Ray without --detach,
    serve until Ctrl-C (on a cluster the applications outlive the command)."""
    from fmtrade.serve import runner

    if insecure:
        os.environ[INSECURE_ENV] = "1"  # the detached server re-runs this check
    else:
        _refuse_open_without_token(config, host)
    result = runner.up(
        settings(), config, address, host, port, detach, fmtrade_config=CliState.config, ready_timeout_s=ready_timeout
    )
    if json_out:
        emit_json(result)
    else:
        typer.echo(f"fmtrade serve: ready at {result['url']} (applications: {', '.join(result['applications'])})")
    for model, state in ((result.get("ready") or {}).get("models") or {}).items():
        if state != "ok":  # the others answer; this one reports why with every forecast
            typer.echo(f"warning: {model}: {state}", err=True)
    if not detach and not result.get("on_cluster"):  # on a cluster the applications outlive the command
        typer.echo("serving until Ctrl-C", err=True)
        runner.serve_forever()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def _refuse_open_without_token(config: str | None, host: str | None) -> None:
    """Exit 2 when the service would listen beyond loopback with an application that has no API
    token: the forecast and agent routes would be open to the network."""
    from fmtrade.serve import runner
    from fmtrade.serve.options import AppConfig

    _, doc = runner.read_config(config, settings())
    effective = host or (doc.get("http_options") or {}).get("host") or settings().serve.host
    if _is_loopback(str(effective)):
        return
    for entry in doc["applications"]:
        args = dict(entry.get("args") or {})
        if CliState.config:
            args.setdefault("config", CliState.config)
        app_config = AppConfig.parse(args)
        if not app_config.token(app_config.load_settings()):
            fail(
                f"host: {effective} is reachable beyond this machine and application "
                f"{entry.get('name', 'default')!r} has no API token: set FMTRADE_API_TOKEN (or serve.api_token, "
                "or api_token in the application's args), serve on 127.0.0.1, or pass --insecure"
            )


@app.command("status")
def status(address: str = ADDRESS_OPTION, json_out: bool = JSON_OPTION) -> None:
    """Applications, deployments and replica states."""
    from fmtrade.serve import runner

    result = runner.status(settings(), address)
    if json_out:
        emit_json(result)
        return
    typer.echo(f"url: {result['url'] or '-'}")
    if "pid" in result:  # a detached local service: its process and its /readyz answer
        typer.echo(f"pid {result['pid']}: {'running' if result['running'] else 'not running'}")
        ready = result["ready"] or {}
        if "error" in ready:
            typer.echo(f"  /readyz: {ready['error']}")
        for model, state in (ready.get("models") or {}).items():
            typer.echo(f"  {model}: {state}")
        return
    for name, application in result["applications"].items():
        typer.echo(f"{name}: {application['status']}")
        for dep, info in application["deployments"].items():
            replicas = ", ".join(f"{k.lower()} {v}" for k, v in info["replicas"].items()) or "no replicas"
            typer.echo(f"  {dep}: {info['status']} ({replicas})")


@app.command("scale")
def scale(
    model: str = typer.Argument(..., help="A served model (its deployment is model-<MODEL>)."),
    min_replicas: int = typer.Option(None, "--min", min=0, help="Fewest replicas the autoscaler keeps."),
    max_replicas: int = typer.Option(None, "--max", min=1, help="Most replicas the autoscaler may start."),
    replicas: int = typer.Option(None, "--replicas", min=1, help="A fixed count (--min and --max both N)."),
    address: str = ADDRESS_OPTION,
    timeout: float = typer.Option(
        300.0, "--timeout", min=1, help="Seconds to wait until the replicas running are within the bounds."
    ),
    json_out: bool = JSON_OPTION,
) -> None:
    """Change one model's replica bounds on the running application, in place: no replica restarts
    and the other models keep answering (the application `serve up --address` deployed)."""
    from fmtrade.serve import runner

    if replicas is not None and (min_replicas is not None or max_replicas is not None):
        fail("replicas: give --replicas alone, or --min/--max")
    if replicas is None and min_replicas is None and max_replicas is None:
        fail("replicas: give --replicas N, or --min and/or --max")
    low, high = (replicas, replicas) if replicas is not None else (min_replicas, max_replicas)
    result = runner.scale(settings(), model, low, high, address, timeout_s=timeout)
    if json_out:
        emit_json(result)
    else:
        typer.echo(
            f"fmtrade serve: {result['deployment']} scales {result['min_replicas']}-{result['max_replicas']} "
            f"replicas ({result['running']} running)"
        )


@app.command("down")
def down(
    address: str = ADDRESS_OPTION,
    config: str = typer.Option(
        None,
        "--config",
        help="On a cluster: the Serve config file whose applications to delete (default: "
        "those `up` deployed from here, else serve.config, serve/config.yaml).",
    ),
    json_out: bool = JSON_OPTION,
) -> None:
    """Stop the detached service (and its embedded Ray), or delete fmtrade's applications from a cluster."""
    from fmtrade.serve import runner

    result = runner.down(settings(), address, config=config)
    if json_out:
        emit_json(result)
    else:
        if not result["stopped"]:
            typer.echo(f"fmtrade serve: {result['reason']}")
        elif "applications" in result:  # on a cluster
            typer.echo(f"fmtrade serve: deleted {', '.join(result['applications'])}")
        else:
            typer.echo("fmtrade serve: stopped")
