"""A real multi-node Ray cluster on one machine, for development and tests.

The head and each worker are separate raylets started with ``ray start`` (as on a cloud
cluster), each with its own CPU count; workers also carry a ``fmtrade_worker`` custom
resource so placement across nodes can be asserted. The head runs the job server, so
``ray job submit`` and ``fmtrade cluster submit`` talk to it exactly as to a remote cluster.

Secure by default: the dashboard and job server listen on 127.0.0.1 unless ``dashboard_host``
says otherwise, and token authentication is on. Every node
and client here runs with ``RAY_AUTH_MODE=token`` and the token in ``~/.ray/auth_token``
(created once with ``ray get-auth-token --generate``), so nobody has to set anything.

``ray stop`` would stop every Ray process on the machine (other clusters, a test's embedded
Ray); ``down()`` stops only this cluster: the processes of its session (found from its GCS
port) and their children. Like ``ray stop`` it also removes Ray's address file when that names
this cluster: left behind, it sends every later ``--address auto`` to a GCS that is gone.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from fmtrade.errors import FmtradeError
from fmtrade.jobs.ray_runtime import fast_path_env, ray_address_file

WORKER_RESOURCE = "fmtrade_worker"


class ClusterError(FmtradeError):
    """The local cluster could not be started, reached or stopped."""


def ray_env() -> dict[str, str]:
    """Environment for every node and client of the local cluster (token auth on, token on disk,
    Ray Serve's throughput settings unless already set)."""
    env = {**fast_path_env(), **os.environ}
    env["RAY_AUTH_MODE"] = "token"
    env.pop("RAY_ADDRESS", None)
    # Job entrypoints run `python ...` on the nodes: make it this environment's interpreter.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _ray_cli() -> str:
    beside = Path(sys.executable).with_name("ray")
    return str(beside) if beside.exists() else (shutil.which("ray") or "ray")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _node_ports() -> list[str]:
    """Every node gets its own agent ports: two nodes on one machine (or another Ray already
    running here) would otherwise collide on Ray's fixed defaults."""
    return [
        "--dashboard-agent-listen-port",
        str(_free_port()),
        "--dashboard-agent-grpc-port",
        str(_free_port()),
        "--runtime-env-agent-port",
        str(_free_port()),
        "--metrics-export-port",
        str(_free_port()),
    ]


def _count(cpus: float) -> str:
    return str(int(cpus)) if float(cpus).is_integer() else str(cpus)


def _run(args: list[str], timeout_s: float = 180) -> str:
    try:
        done = subprocess.run(
            [_ray_cli(), *args], env=ray_env(), capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(f"`ray {' '.join(args)}` did not finish within {timeout_s:.0f} s") from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise ClusterError(f"`ray {' '.join(args[:2])}` failed: {' | '.join(tail)}")
    return done.stdout


@dataclass(frozen=True)
class LocalCluster:
    """Head + ``workers`` worker nodes on 127.0.0.1."""

    workers: int = 1
    cpus_per_node: float = 1
    gcs_port: int = 6390
    dashboard_port: int = 8265
    #: Where the dashboard and job server listen: loopback unless told otherwise (a job server
    #: runs whatever it is sent; token authentication stays on either way).
    dashboard_host: str = "127.0.0.1"
    #: CPUs the head offers to tasks (default ``cpus_per_node``); 0 keeps every task on the workers.
    head_cpus: float | None = None

    @property
    def address(self) -> str:
        """GCS address (what ``ray.init(address=...)`` and ``ray start --address`` take)."""
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        """Job server address (what ``ray job submit --address`` takes)."""
        host = "127.0.0.1" if self.dashboard_host in ("0.0.0.0", "::") else self.dashboard_host
        return f"http://{host}:{self.dashboard_port}"

    def up(self, timeout_s: float = 180) -> None:
        """Start the head and the workers, then wait until the job server answers."""
        _run(["get-auth-token", "--generate"])
        cpus = _count(self.cpus_per_node)
        _run(
            [
                "start",
                "--head",
                "--node-ip-address",
                "127.0.0.1",
                "--port",
                str(self.gcs_port),
                "--num-cpus",
                cpus if self.head_cpus is None else _count(self.head_cpus),
                "--include-dashboard",
                "true",
                "--dashboard-host",
                self.dashboard_host,
                "--dashboard-port",
                str(self.dashboard_port),
                "--disable-usage-stats",
                *_node_ports(),
            ],
            timeout_s,
        )
        for _ in range(self.workers):
            _run(
                [
                    "start",
                    "--address",
                    self.address,
                    "--node-ip-address",
                    "127.0.0.1",
                    "--num-cpus",
                    cpus,
                    "--resources",
                    f'{{"{WORKER_RESOURCE}": 1}}',
                    "--disable-usage-stats",
                    *_node_ports(),
                ],
                timeout_s,
            )
        self.wait_ready(timeout_s)

    def wait_ready(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.dashboard_url}/api/version", timeout=5).status_code < 500:
                    return
            except httpx.HTTPError as exc:
                last = exc
            time.sleep(1)
        raise ClusterError(f"job server at {self.dashboard_url} not ready after {timeout_s:.0f} s ({last})")

    def processes(self) -> list[psutil.Process]:
        """This cluster's processes: everything naming its session directory or its GCS address,
        plus their children (workers rename themselves ``ray::...``: found as the raylets' children)."""
        session = None
        for proc in psutil.process_iter(["cmdline"]):
            args = proc.info["cmdline"] or []
            if any(a == f"--gcs_server_port={self.gcs_port}" for a in args):
                session = next((a.split("/logs")[0].split("=", 1)[1] for a in args if a.startswith("--log_dir=")), None)
                break
        if session is None:
            return []
        found: dict[int, psutil.Process] = {}
        address_suffix = f":{self.gcs_port}"  # e.g. the Ray client server: --address=<node ip>:<port>
        for proc in psutil.process_iter(["cmdline"]):
            args = proc.info["cmdline"] or []
            if any(session in a for a in args) or any(
                a.startswith(("--address=", "--gcs-address=")) and a.endswith(address_suffix) for a in args
            ):
                found[proc.pid] = proc
                for child in proc.children(recursive=True):
                    found[child.pid] = child
        return [proc for proc in found.values() if still_running(proc)]

    def down(self, grace_s: float = 10) -> int:
        """Stop this cluster's processes (SIGTERM, then SIGKILL after ``grace_s``) and wait until
        they are gone: a SIGKILLed GCS on a busy machine can take a moment to exit, and returning
        before then would let the caller see (or collide with) a half-stopped cluster. Returns how many."""
        procs = self.processes()
        for proc in procs:
            try:
                proc.terminate()
            except psutil.NoSuchProcess:
                continue
        _, alive = psutil.wait_procs(procs, timeout=grace_s)
        for proc in alive:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                continue
        _, survivors = psutil.wait_procs(alive, timeout=grace_s)
        survivors = [proc for proc in survivors if still_running(proc)]
        if survivors:
            names = ", ".join(f"{proc.pid}" for proc in survivors)
            raise ClusterError(f"processes {names} still running {grace_s:.0f} s after SIGKILL")
        self._forget_address()
        return len(procs)

    def _forget_address(self) -> None:
        """Remove the address file ``ray start --head`` wrote, if it still names this cluster (by
        its GCS port: Ray writes the node's IP there, not 127.0.0.1)."""
        path = ray_address_file()
        try:
            if path.read_text().strip().rpartition(":")[2] == str(self.gcs_port):
                path.unlink()
        except FileNotFoundError:
            pass


def still_running(proc: psutil.Process) -> bool:
    """Whether ``proc`` still runs: a zombie (exited, waiting for a parent that never reaps it, as
    under an init-less container's PID 1) has stopped."""
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
