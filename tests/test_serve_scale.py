"""``fmtrade serve scale`` on a running application on a real Ray cluster: one member's replica
bounds change in place while the other members keep answering, and no other replica restarts."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from fmtrade.cluster.dashboard import get_json
from fmtrade.cluster.local import LocalCluster, ray_env
from tests.conftest import free_port

pytestmark = pytest.mark.slow

MODELS = ["random-walk", "naive", "seasonal-naive"]


def _fmtrade(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fmtrade", *args], capture_output=True, text=True, timeout=timeout, env=ray_env()
    )


def _replicas(cluster: LocalCluster) -> dict[str, set[str]]:
    """Running replica ids per deployment, from the dashboard's Serve REST API."""
    apps = get_json(cluster.dashboard_url, "/api/serve/applications/")["applications"]
    return {
        name: {r["replica_id"] for r in dep["replicas"] if r["state"] == "RUNNING"}
        for name, dep in apps["fmtrade"]["deployments"].items()
    }


class Traffic(threading.Thread):
    """Forecasts from the members that are not scaled, back to back, counting every failure."""

    def __init__(self, url: str, models: list[str]) -> None:
        super().__init__(daemon=True)
        self.url, self.models = url, models
        self.stop = threading.Event()
        self.ok = 0
        self.failures: list[str] = []

    def run(self) -> None:
        body = {"context": [100.0 + (i % 24) for i in range(200)], "horizon": 6, "models": self.models}
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                try:
                    response = client.post(f"{self.url}/v1/forecast", json=body)
                    doc = response.json()
                    if response.status_code != 200 or doc.get("failed"):
                        self.failures.append(f"{response.status_code}: {response.text[:200]}")
                    else:
                        self.ok += 1
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))


def test_scale_changes_one_member_in_place_while_the_others_answer(tmp_path: Path, isolated_home: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    small = {"num_cpus": 0.1}
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump({
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [{"name": "fmtrade", "import_path": "fmtrade.serve.app:build_app", "route_prefix": "/",
                          "args": {"models": MODELS, "model_defaults": small, "ensemble": small, "ingress": small}}],
    }))  # fmt: skip
    cluster = LocalCluster(workers=0, cpus_per_node=2, gcs_port=free_port(), dashboard_port=free_port())
    cluster.up()
    try:
        up = _fmtrade("serve", "up", "--address", cluster.address, "--config", str(config), "--json")
        assert up.returncode == 0, up.stderr[-2000:]
        before = _replicas(cluster)
        assert {name: len(ids) for name, ids in before.items()} == dict.fromkeys(
            ["api", "ensemble", *(f"model-{m}" for m in MODELS)], 1
        )
        traffic = Traffic(url, ["naive", "seasonal-naive"])
        traffic.start()
        time.sleep(2)
        try:
            up2 = _fmtrade("serve", "scale", "random-walk", "--replicas", "2", "--address", cluster.address, "--json")
            assert up2.returncode == 0, up2.stderr[-2000:]
            assert json.loads(up2.stdout) == {
                "application": "fmtrade", "deployment": "model-random-walk",
                "min_replicas": 2, "max_replicas": 2, "running": 2,
            }  # fmt: skip
            time.sleep(2)
            after = _replicas(cluster)
            # Bounds from --min/--max (autoscaling between them) keep the member it already has.
            bounded = _fmtrade("serve", "scale", "naive", "--min", "1", "--max", "3", "--address", cluster.address)
            assert bounded.returncode == 0, bounded.stderr[-2000:]
            assert bounded.stdout.strip() == "fmtrade serve: model-naive scales 1-3 replicas (1 running)"
            time.sleep(2)
        finally:
            traffic.stop.set()
            traffic.join(timeout=60)
        assert traffic.failures == [] and traffic.ok > 10, (traffic.ok, traffic.failures[:5])
        assert len(after["model-random-walk"]) == 2 and before["model-random-walk"] < after["model-random-walk"]
        unchanged = {name: ids for name, ids in after.items() if name != "model-random-walk"}
        assert unchanged == {name: ids for name, ids in before.items() if name != "model-random-walk"}
        assert _replicas(cluster) == after  # the second scale restarted nothing either
        # The scaled member answers from both replicas' deployment; the earlier scale is kept.
        answer = httpx.post(f"{url}/v1/forecast", json={"context": [1.0] * 50, "horizon": 3,
                                                        "models": ["random-walk"]}, timeout=30)  # fmt: skip
        assert answer.status_code == 200 and answer.json()["failed"] == {}
        state = json.loads((isolated_home / "serve" / "state.json").read_text())
        assert state["scaling"] == {"fmtrade": {"random-walk": {"min_replicas": 2, "max_replicas": 2},
                                                "naive": {"min_replicas": 1, "max_replicas": 3}}}  # fmt: skip

        unknown = _fmtrade("serve", "scale", "chronos-nope", "--replicas", "2", "--address", cluster.address)
        assert unknown.returncode == 2
        assert unknown.stderr.strip().splitlines()[-1] == "error: model: chronos-nope is not served by fmtrade"
        inverted = _fmtrade("serve", "scale", "naive", "--min", "4", "--address", cluster.address)
        assert inverted.returncode == 2
        assert inverted.stderr.strip().splitlines()[-1] == "error: min: min 4 exceeds max 3"
    finally:
        stopped = cluster.down()
    assert stopped > 0


def test_scale_options_are_checked_before_anything_runs(isolated_home: Path) -> None:
    both = _fmtrade("serve", "scale", "naive", "--replicas", "2", "--max", "3")
    assert both.returncode == 2 and both.stderr.strip() == "error: replicas: give --replicas alone, or --min/--max"
    none = _fmtrade("serve", "scale", "naive")
    assert none.returncode == 2 and none.stderr.strip() == "error: replicas: give --replicas N, or --min and/or --max"
    zero = _fmtrade("serve", "scale", "naive", "--replicas", "0")
    assert zero.returncode == 2 and "--replicas" in zero.stderr
    nothing = _fmtrade("serve", "scale", "naive", "--replicas", "2")
    assert nothing.returncode == 2
    assert "no application deployed to a cluster by `fmtrade serve up --address ...` is recorded" in nothing.stderr
