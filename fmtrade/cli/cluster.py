"""``fmtrade cluster up|down|submit|status|jobs|logs|stop``: a local multi-node Ray cluster, job
submission and the day-to-day view of any cluster (through its job server address).

The CLI is the top layer, so it may call into cluster/ (imported inside each command).
"""

from __future__ import annotations

import shlex

import typer

from fmtrade.cli.common import JSON_OPTION, emit_json, fail, settings

app = typer.Typer(help="Ray clusters: a local multi-node one, jobs, status and logs.", no_args_is_help=True)

JOB_SERVER_OPTION = typer.Option(
    None,
    "--address",
    help="The cluster's job server URL, not its Ray address (default: http://127.0.0.1:<cluster.dashboard_port>).",
)
JOB_ID_ARGUMENT = typer.Argument(..., help="Job or submission id (see `fmtrade cluster jobs`).")


def _job_server(address: str | None) -> str:
    return address or f"http://127.0.0.1:{settings().cluster.dashboard_port}"


@app.command("up")
def up(
    workers: int = typer.Option(1, "--workers", min=0, help="Worker nodes besides the head."),
    cpus_per_node: float = typer.Option(1.0, "--cpus-per-node", min=0.1, help="CPUs each node advertises."),
    head_cpus: float = typer.Option(
        None, "--head-cpus", min=0, help="CPUs the head advertises (default --cpus-per-node; 0: tasks only on workers)."
    ),
    port: int = typer.Option(6390, "--port", help="GCS port of the head."),
    dashboard_port: int = typer.Option(None, "--dashboard-port", help="Job server port [cluster.dashboard_port]."),
    dashboard_host: str = typer.Option(
        "127.0.0.1",
        "--dashboard-host",
        help="Interface the dashboard and job server listen on (token auth stays on; prefer an SSH tunnel).",
    ),
    json_out: bool = JSON_OPTION,
) -> None:
    """Start a head and worker nodes on 127.0.0.1 (separate raylets, token auth handled)."""
    from fmtrade.cluster.local import LocalCluster

    port_of_dashboard = dashboard_port or settings().cluster.dashboard_port
    cluster = LocalCluster(workers, cpus_per_node, port, port_of_dashboard, dashboard_host, head_cpus)
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
    address: str = JOB_SERVER_OPTION,
    working_dir: str = typer.Option(
        None, "--working-dir", help="Directory uploaded as the job's code (default: the runtime env's, else .)."
    ),
    runtime_env: str = typer.Option(
        None, "--runtime-env", help="YAML file with working_dir, excludes, pip, env_vars (cluster/runtime_env.yaml)."
    ),
    submission_id: str = typer.Option(
        None,
        "--submission-id",
        help="Id for the job; submitting the same id again never runs it twice (it attaches to the existing job).",
    ),
    env: list[str] = typer.Option([], "--env", help="KEY=VALUE for the job's environment (repeatable)."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Block until the job ends and print its logs."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Submit `-- ENTRYPOINT...` (e.g. `python -m fmtrade backtest --symbols BTCUSDT ...`) to a Ray cluster."""
    from fmtrade.cluster.submit import load_runtime_env
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
    extra = load_runtime_env(runtime_env) if runtime_env else None
    result = submit_job(_job_server(address), entrypoint, working_dir, env_vars, wait, runtime_env=extra,
                        submission_id=submission_id)  # fmt: skip
    if json_out:
        emit_json({"job_id": result.job_id, "status": result.status, "logs": result.logs,
                   "already_submitted": result.already_submitted})  # fmt: skip
        return
    if result.already_submitted:
        typer.echo(f"already submitted: {result.job_id} {result.status} (not run again)", err=True)
    if result.logs:
        typer.echo(result.logs.rstrip())
    typer.echo(f"job {result.job_id}: {result.status}", err=True)
    if wait and result.status != "SUCCEEDED":
        raise typer.Exit(1)


@app.command("status")
def status(address: str = JOB_SERVER_OPTION, json_out: bool = JSON_OPTION) -> None:
    """Nodes (state, CPU/GPU/memory), running jobs, Serve applications and replicas per deployment."""
    from fmtrade.cluster import ops

    result = ops.status(_job_server(address))
    if json_out:
        emit_json(result)
        return
    typer.echo(f"cluster at {result['address']}: {result['alive']}/{len(result['nodes'])} nodes alive")
    for node in result["nodes"]:
        role = "head  " if node["head"] else "worker"
        typer.echo(f"  {role} {node['node_id'][:12]} {node['ip']} {node['state']}: {node['cpus']:g} CPU, "
                   f"{node['gpus']:g} GPU, {node['memory_gib']:g} GiB")  # fmt: skip
    typer.echo(f"running jobs: {len(result['running_jobs'])}")
    for job in result["running_jobs"]:
        typer.echo(f"  {job['job_id']} {job['status']}: {job['entrypoint']}")
    typer.echo(f"serve applications: {len(result['serve'])}")
    for name, application in result["serve"].items():
        typer.echo(f"  {name}: {application['status']}")
        for dep, info in application["deployments"].items():
            replicas = ", ".join(f"{k.lower()} {v}" for k, v in info["replicas"].items()) or "no replicas"
            typer.echo(f"    {dep}: {info['status']} ({replicas})")


@app.command("jobs")
def jobs(address: str = JOB_SERVER_OPTION, json_out: bool = JSON_OPTION) -> None:
    """Every job on the cluster, newest first."""
    from fmtrade.cluster import ops

    rows = ops.jobs(_job_server(address))
    if json_out:
        emit_json(rows)
        return
    for job in rows:
        typer.echo(f"{job['job_id']}\t{job['status']}\t{job['entrypoint']}")
    if not rows:
        typer.echo("no jobs", err=True)


@app.command("logs")
def logs(
    job_id: str = JOB_ID_ARGUMENT,
    address: str = JOB_SERVER_OPTION,
    follow: bool = typer.Option(False, "--follow", "-f", help="Stream the logs until the job ends."),
    json_out: bool = JSON_OPTION,
) -> None:
    """A job's logs (driver output)."""
    from fmtrade.cluster import ops

    url = _job_server(address)
    if json_out:
        text = ops.logs(url, job_id, follow)
        emit_json({"job_id": job_id, "status": ops.job(url, job_id)["status"], "logs": text})
        return
    if follow:
        ops.logs(url, job_id, True, write=lambda chunk: typer.echo(chunk, nl=False))
    else:
        typer.echo(ops.logs(url, job_id).rstrip())


@app.command("stop")
def stop(job_id: str = JOB_ID_ARGUMENT, address: str = JOB_SERVER_OPTION, json_out: bool = JSON_OPTION) -> None:
    """Ask a running job to stop (its driver gets SIGTERM, then SIGKILL)."""
    from fmtrade.cluster import ops

    result = ops.stop(_job_server(address), job_id)
    if json_out:
        emit_json(result)
    elif result["stopped"]:
        typer.echo(f"job {job_id}: stop requested ({result['status']})")
    else:
        typer.echo(f"job {job_id}: not running ({result['status']})")
