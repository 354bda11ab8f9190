"""``fmtrade cluster up|down|submit``: a local multi-node Ray cluster and job submission.

The CLI is the top layer, so it may call into cluster/ (imported inside each command).
"""

from __future__ import annotations

import shlex

import typer

from fmtrade.cli.common import JSON_OPTION, emit_json, fail, settings

app = typer.Typer(help="Local multi-node Ray cluster and job submission.", no_args_is_help=True)


@app.command("up")
def up(
    workers: int = typer.Option(1, "--workers", min=0, help="Worker nodes besides the head."),
    cpus_per_node: float = typer.Option(1.0, "--cpus-per-node", min=0.1, help="CPUs each node advertises."),
    port: int = typer.Option(6390, "--port", help="GCS port of the head."),
    dashboard_port: int = typer.Option(None, "--dashboard-port", help="Job server port [cluster.dashboard_port]."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Start a head and worker nodes on 127.0.0.1 (separate raylets, token auth handled)."""
    from fmtrade.cluster.local import LocalCluster

    cluster = LocalCluster(workers, cpus_per_node, port, dashboard_port or settings().cluster.dashboard_port)
    cluster.up()
    result = {"address": cluster.address, "dashboard": cluster.dashboard_url, "nodes": 1 + workers}
    if json_out:
        emit_json(result)
    else:
        typer.echo(f"local cluster up: {result['nodes']} nodes, GCS {cluster.address}, jobs {cluster.dashboard_url}")
        submit = f"fmtrade cluster submit --address {cluster.dashboard_url}"
        typer.echo(f"submit: {submit} -- python -m fmtrade backtest ...")


@app.command("down")
def down(port: int = typer.Option(6390, "--port", help="GCS port of the cluster's head.")) -> None:
    """Stop the local cluster started with `up` (only its processes; other Ray instances keep running)."""
    from fmtrade.cluster.local import LocalCluster

    stopped = LocalCluster(gcs_port=port).down()
    if not stopped:
        fail(f"port: no local cluster with its head on GCS port {port}")
    typer.echo(f"local cluster stopped ({stopped} processes)", err=True)


@app.command("submit", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def submit(
    ctx: typer.Context,
    address: str = typer.Option(
        None,
        "--address",
        help="The cluster's job server URL, not its Ray address (default: http://127.0.0.1:<cluster.dashboard_port>).",
    ),
    working_dir: str = typer.Option(".", "--working-dir", help="Directory uploaded as the job's code."),
    env: list[str] = typer.Option([], "--env", help="KEY=VALUE for the job's environment (repeatable)."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Block until the job ends and print its logs."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Submit `-- ENTRYPOINT...` (e.g. `python -m fmtrade backtest --symbols BTCUSDT ...`) to a Ray cluster."""
    from fmtrade.cluster.submit import submit as submit_job

    entrypoint = shlex.join(ctx.args)
    if not entrypoint:
        fail("entrypoint: give the command after --, e.g. -- python -m fmtrade backtest --symbols BTCUSDT")
    env_vars = {}
    for item in env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--env: expected KEY=VALUE, got {item!r}")
        env_vars[key] = value
    url = address or f"http://127.0.0.1:{settings().cluster.dashboard_port}"
    result = submit_job(url, entrypoint, working_dir, env_vars, wait)
    if json_out:
        emit_json({"job_id": result.job_id, "status": result.status, "logs": result.logs})
        return
    if result.logs:
        typer.echo(result.logs.rstrip())
    typer.echo(f"job {result.job_id}: {result.status}", err=True)
    if wait and result.status != "SUCCEEDED":
        raise typer.Exit(1)
