"""A real two-node Ray cluster on this machine: the backtest job submitted to it and the Serve
application deployed to it by Ray's own CLI, both unchanged."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from fmtrade.client import forecast_remote
from fmtrade.cluster.local import LocalCluster, ray_env, still_running
from fmtrade.cluster.submit import submit
from fmtrade.jobs.ray_runtime import ray_address_file
from fmtrade.serve.app import cpus_at_start
from fmtrade.serve.options import AppConfig
from fmtrade.serve.runner import PACKAGED_CONFIG, wait_ready
from tests.conftest import REPO, free_port

pytestmark = pytest.mark.slow


def _fmtrade(*args: str, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fmtrade", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def test_backtest_job_runs_unchanged_on_a_two_node_cluster(tmp_path: Path, isolated_home: Path) -> None:
    synth = _fmtrade("data", "synth", "--symbols", "SYNAUSDT,SYNBUSDT", "--hours", "2000", "--seed", "1", "--json")
    assert synth.returncode == 0, synth.stderr[-2000:]
    cluster = LocalCluster(workers=1, cpus_per_node=1, gcs_port=free_port(), dashboard_port=free_port())
    address_file = ray_address_file()
    cluster.up()
    try:
        assert len(cluster.processes()) > 4  # GCS, two raylets, dashboard, agents...
        assert address_file.read_text().strip().endswith(f":{cluster.gcs_port}")  # `ray start --head` wrote it
        out = tmp_path / "run"
        entrypoint = (
            "python -m fmtrade backtest --symbols SYNAUSDT,SYNBUSDT --models random-walk,naive,ensemble "
            f"--start 2022-03-01 --end 2022-03-20 --out {out} --json"
        )
        result = submit(cluster.dashboard_url, entrypoint, REPO, {"FMTRADE_HOME": str(isolated_home)})
        assert result.status == "SUCCEEDED", result.logs[-3000:]
        rows = json.loads(next(line for line in result.logs.splitlines() if line.startswith("[")))
        assert {(r["symbol"], r["model"]) for r in rows} >= {
            (s, m) for s in ("SYNAUSDT", "SYNBUSDT") for m in ("random-walk", "naive", "ensemble", "buy-and-hold")
        }
        assert json.loads((out / "summary.json").read_text()) == rows
    finally:
        stopped = cluster.down()
    assert stopped > 0 and cluster.processes() == []
    assert not address_file.exists()


def test_serve_config_deploys_unchanged_on_a_two_node_cluster(tmp_path: Path, isolated_home: Path) -> None:
    """``serve deploy serve/config.yaml`` (Ray's CLI) on the cluster, then ``fmtrade serve status``
    and ``down`` against it. Only the proxy port of the packaged file is changed (to a free one)."""
    from fmtrade.data.store import Store
    from fmtrade.data.synthetic import SyntheticSpec, synthesize

    built = _fmtrade("models", "build", "--only", "chronos-bolt-fm-tiny", "--pretrain-minutes", "0", "--json")
    assert built.returncode == 0, built.stderr[-2000:]
    market = synthesize(["SYNUSDT"], SyntheticSpec(hours=600, start="2024-01-01", seed=5))
    Store(str(isolated_home / "store")).write_bars("linear", "SYNUSDT", "60", market.bars["SYNUSDT"])
    doc = yaml.safe_load(PACKAGED_CONFIG.read_text())
    port = free_port()
    doc["http_options"]["port"] = port
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(doc))
    served = {"chronos-bolt-fm-tiny", "random-walk", "naive", "seasonal-naive", "auto-ets", "theta"}
    # The graph asks for more CPU than one node has, so it can only run spread over both.
    app = AppConfig.parse(doc["applications"][0]["args"])
    cpus = cpus_at_start(app, sorted(served))
    cluster = LocalCluster(workers=1, cpus_per_node=1, gcs_port=free_port(), dashboard_port=free_port())
    assert cpus > 1
    cluster.up()
    try:
        serve_cli = str(Path(sys.executable).with_name("serve"))
        deploy = subprocess.run(
            [serve_cli, "deploy", str(config), "--address", cluster.dashboard_url],
            env=ray_env(), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert deploy.returncode == 0, deploy.stderr[-2000:]
        url = f"http://127.0.0.1:{port}"
        ready = wait_ready(url, timeout_s=300)
        assert set(ready["models"]) == served and ready["ready"] is True
        answer = forecast_remote(url, symbol="SYNUSDT", horizon=6, context_length=256)
        assert set(answer["models"]) == served and answer["failed"] == {}
        assert len(answer["timestamps"]) == 6 and len(answer["ensemble"]["quantiles"]["0.9"]) == 6
        status = _fmtrade("serve", "status", "--address", cluster.address, "--json", env=ray_env())
        assert status.returncode == 0, status.stderr[-2000:]
        deployments = json.loads(status.stdout)["applications"]["fmtrade"]["deployments"]
        assert set(deployments) == {f"model-{m}" for m in served} | {"ensemble", "api"}
        assert all(d["replicas"].get("RUNNING", 0) >= 1 for d in deployments.values())
        down = _fmtrade("serve", "down", "--address", cluster.address, "--json", env=ray_env())
        assert down.returncode == 0, down.stderr[-2000:]
        assert json.loads(down.stdout)["applications"] == ["fmtrade"]  # the packaged file's (`serve deploy`)
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 404  # Serve stays, the application is gone
        # A graph the cluster cannot place (64 GPUs): `fmtrade serve up` gives up after its timeout
        # and says the application stays on the cluster (an autoscaler could still place it).
        args = doc["applications"][0]["args"]
        args.update(models=["naive"], model_defaults={"num_cpus": 0.1, "num_gpus": 64}, model_options={})
        config.write_text(yaml.safe_dump(doc))
        up = _fmtrade("serve", "up", "--address", cluster.address, "--config", str(config), "--ready-timeout", "10",
                      env=ray_env())  # fmt: skip
        assert up.returncode == 2
        last = up.stderr.strip().splitlines()[-1]
        assert "not running: model-naive UPDATING" in last and "the applications stay on the cluster" in last
        down = _fmtrade("serve", "down", "--address", cluster.address, "--json", env=ray_env())
        assert down.returncode == 0, down.stderr[-2000:]
        assert json.loads(down.stdout)["applications"] == ["fmtrade"]
    finally:
        stopped = cluster.down()
    assert stopped > 0 and cluster.processes() == []


def test_serve_down_deletes_only_fmtrades_applications_from_a_cluster(tmp_path: Path, isolated_home: Path) -> None:
    """Two applications deployed by ``fmtrade serve up --address`` from two config files (``up``
    returns once ready; it used to go on in the foreground until Ctrl-C). ``down --config`` deletes
    the named file's application and leaves the other one and Serve answering; ``down`` then
    deletes the one ``up`` recorded last. It used to shut Serve down on the whole cluster, with
    Ray's "graceful_shutdown failed" warning on the terminal. ``cluster status`` shows both."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    def config(name: str, prefix: str) -> str:
        small = {"num_cpus": 0.1}
        app = {"models": ["random-walk"], "model_defaults": small, "ensemble": small, "ingress": small}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({
            "http_options": {"host": "127.0.0.1", "port": port},
            "applications": [{"name": name, "import_path": "fmtrade.serve.app:build_app", "route_prefix": prefix,
                              "args": app}],
        }))  # fmt: skip
        return str(path)

    first, second = config("fmtrade", "/"), config("other", "/other")
    cluster = LocalCluster(workers=0, cpus_per_node=2, gcs_port=free_port(), dashboard_port=free_port())
    cluster.up()
    try:
        for file in (first, second):
            up = _fmtrade("serve", "up", "--address", cluster.address, "--config", file, "--json", env=ray_env())
            assert up.returncode == 0, up.stderr[-2000:]
        assert httpx.get(f"{url}/readyz").status_code == httpx.get(f"{url}/other/readyz").status_code == 200
        # `cluster status` shows each application, its deployments and their replicas.
        status = json.loads(_fmtrade("cluster", "status", "--address", cluster.dashboard_url, "--json").stdout)
        assert set(status["serve"]) == {"fmtrade", "other"}
        app = status["serve"]["other"]
        assert app["status"] == "RUNNING" and app["route_prefix"] == "/other"
        assert set(app["deployments"]) == {"model-random-walk", "ensemble", "api"}
        for name, dep in app["deployments"].items():
            assert dep["status"] == "HEALTHY" and dep["replicas"] == {"RUNNING": dep["target_replicas"]}, name
        text = _fmtrade("cluster", "status", "--address", cluster.dashboard_url).stdout
        assert "other: RUNNING" in text and "model-random-walk: HEALTHY (running 1)" in text

        down = _fmtrade("serve", "down", "--address", cluster.address, "--config", first, "--json", env=ray_env())
        assert down.returncode == 0, down.stderr[-2000:]
        assert json.loads(down.stdout)["applications"] == ["fmtrade"]
        assert "(raylet)" not in down.stderr, down.stderr[-2000:]
        assert httpx.get(f"{url}/readyz").status_code == 404  # Serve's proxy answers, no application there
        assert httpx.get(f"{url}/other/readyz").status_code == 200

        down = _fmtrade("serve", "down", "--address", cluster.address, env=ray_env())
        assert down.returncode == 0, down.stderr[-2000:]
        assert down.stdout.strip() == "fmtrade serve: deleted other"  # the one the last `up` recorded
        assert httpx.get(f"{url}/other/readyz").status_code == 404

        again = _fmtrade("serve", "down", "--address", cluster.address, "--config", first, "--json", env=ray_env())
        assert again.returncode == 0, again.stderr[-2000:]
        assert json.loads(again.stdout) == {
            "stopped": False,
            "reason": "no application named fmtrade runs on the cluster (running: none); "
            "--config names the file they were deployed from",
        }
    finally:
        stopped = cluster.down()
    assert stopped > 0 and cluster.processes() == []


def test_submit_to_nothing_is_a_clear_error(tmp_path: Path) -> None:
    done = _fmtrade("cluster", "submit", "--address", f"http://127.0.0.1:{free_port()}", "--", "python", "-V")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: address: cannot submit")
    none = _fmtrade("cluster", "down", "--port", str(free_port()))
    assert none.returncode == 2 and "no local cluster" in none.stderr


def test_down_kills_what_ignores_sigterm_and_waits_until_it_is_gone(tmp_path: Path) -> None:
    """A stand-in GCS (named like one on the command line) that ignores SIGTERM, with a child:
    ``down`` must SIGKILL both after the grace period and return only once they have exited."""
    port = free_port()
    stubborn = (
        "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "subprocess.Popen([sys.executable, '-c', 'import signal, time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)']); time.sleep(600)"
    )
    gcs = subprocess.Popen(
        [sys.executable, "-c", stubborn, f"--gcs_server_port={port}", f"--log_dir={tmp_path}/session/logs"],
        start_new_session=True,  # one group: the finally below reaches the child too if the test fails
    )
    cluster = LocalCluster(gcs_port=port)
    try:
        deadline = time.monotonic() + 30
        while len(cluster.processes()) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        procs = cluster.processes()
        assert gcs.pid in {p.pid for p in procs} and len(procs) == 2
        started = time.monotonic()
        assert cluster.down(grace_s=1) == 2
        assert time.monotonic() - started >= 1  # SIGTERM was ignored: it took the SIGKILL
        assert not any(still_running(p) for p in procs)
        assert cluster.processes() == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(gcs.pid, signal.SIGKILL)


def test_down_forgets_the_address_file_only_when_it_names_this_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray's temp dir is moved into tmp_path, so the machine's own address file is not touched."""
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    address_file = ray_address_file()
    assert address_file.parent == tmp_path / "ray"
    address_file.parent.mkdir()
    cluster = LocalCluster(gcs_port=free_port())
    address_file.write_text("192.0.2.2:1\n")  # another cluster's
    assert cluster.down() == 0 and address_file.read_text() == "192.0.2.2:1\n"
    address_file.write_text(f"192.0.2.2:{cluster.gcs_port}\n")  # Ray writes the node's IP
    assert cluster.down() == 0 and not address_file.exists()
    assert cluster.down() == 0  # nothing left to forget
