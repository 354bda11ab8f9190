"""A worker node lost in the middle of a backtest job: Ray retries its tasks and restarts its
actors elsewhere, the job finishes, and its summary is identical to an undisturbed run's."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from fmtrade.cluster.dashboard import get_json
from fmtrade.cluster.local import WORKER_RESOURCE, LocalCluster
from fmtrade.cluster.submit import submit
from tests.conftest import free_port, kill_node

pytestmark = pytest.mark.slow

SYMBOLS = "SYNAUSDT,SYNBUSDT,SYNCUSDT"
WORK = ("ray::ForecastActor", "ray::backtest_asset")  # processes doing the job's work


def _worker_raylets(cluster: LocalCluster) -> list[psutil.Process]:
    """The raylets of the cluster's worker nodes (those offering the ``fmtrade_worker`` resource)."""
    return [
        p for p in cluster.processes()
        if p.name() == "raylet"
        and any(a.startswith("--static_resource_list=") and f"{WORKER_RESOURCE}," in a for a in p.cmdline())
    ]  # fmt: skip


def _busy(raylet: psutil.Process) -> bool:
    """Whether a node runs one of the job's actors or tasks."""
    try:
        return any(any(w in " ".join(c.cmdline()) for w in WORK) for c in raylet.children(recursive=True))
    except psutil.NoSuchProcess:
        return False


def _backtest(cluster: LocalCluster, home: Path, out: Path) -> dict:
    entrypoint = (
        f"python -m fmtrade backtest --symbols {SYMBOLS} --models random-walk,naive,theta,ensemble "
        f"--start 2022-02-10 --end 2022-04-05 --out {out} --json"
    )
    job = home.parent / "job"
    job.mkdir(exist_ok=True)
    env = {"FMTRADE_HOME": str(home), "FMTRADE_BACKTEST__INFERENCE_ACTORS": "2"}
    result = submit(cluster.dashboard_url, entrypoint, job, env, timeout_s=900)
    assert result.status == "SUCCEEDED", result.logs[-3000:]
    return {"summary": json.loads((out / "summary.json").read_text()), "logs": result.logs}


def test_a_worker_node_killed_mid_job_changes_nothing_in_the_summary(tmp_path: Path, isolated_home: Path) -> None:
    synth = subprocess.run(
        [sys.executable, "-m", "fmtrade", "data", "synth", "--symbols", SYMBOLS, "--hours", "2400", "--seed", "4"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert synth.returncode == 0, synth.stderr[-2000:]
    # No CPUs on the head: every task runs on the two workers, so losing one loses work in flight.
    cluster = LocalCluster(gcs_port=free_port(), dashboard_port=free_port())  # what `cluster up` starts
    up = subprocess.run(
        [sys.executable, "-m", "fmtrade", "cluster", "up", "--workers", "2", "--cpus-per-node", "1", "--head-cpus", "0",
         "--port", str(cluster.gcs_port), "--dashboard-port", str(cluster.dashboard_port), "--json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert up.returncode == 0, up.stderr[-2000:]
    assert json.loads(up.stdout) == {"address": cluster.address, "dashboard": cluster.dashboard_url, "nodes": 3}
    try:
        nodes = get_json(cluster.dashboard_url, "/api/v0/nodes?detail=1")["data"]["result"]["result"]
        assert sorted(n["resources_total"].get("CPU", 0) for n in nodes) == [0, 1, 1]
        calm = _backtest(cluster, isolated_home, tmp_path / "calm")
        killed: list[int] = []

        def kill_a_busy_worker() -> None:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and not killed:
                for raylet in _worker_raylets(cluster):
                    if _busy(raylet):
                        killed.append(raylet.pid)
                        kill_node(raylet)
                        return
                time.sleep(0.2)

        killer = threading.Thread(target=kill_a_busy_worker, daemon=True)
        killer.start()
        faulted = _backtest(cluster, isolated_home, tmp_path / "faulted")
        killer.join(timeout=10)
        assert killed, "no worker was busy with the job to be killed"
        assert len(_worker_raylets(cluster)) == 1  # the node stayed dead: the job finished on the other
        nodes = get_json(cluster.dashboard_url, "/api/v0/nodes?detail=1")["data"]["result"]["result"]
        dead = [n for n in nodes if n["state"] == "DEAD"]
        assert len(dead) == 1 and not dead[0]["is_head_node"]
        query = "/api/v0/tasks?detail=1&limit=10000&filter_keys=state&filter_predicates=%3D&filter_values=FAILED"
        lost = get_json(cluster.dashboard_url, query)["data"]["result"]["result"]
        # Work in flight on the node died with it (and was done again elsewhere: the job succeeded).
        died = ("WORKER_DIED", "NODE_DIED", "ACTOR_DIED", "ACTOR_UNAVAILABLE")
        assert any(t["error_type"] in died for t in lost), lost
    finally:
        cluster.down()
    assert faulted["summary"] == calm["summary"]
