"""``fmtrade serve up --detach`` / ``status`` / ``down`` as a user runs them (real processes, real Ray)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from fmtrade.client import forecast_remote
from fmtrade.jobs.ray_runtime import ray_cpu_count
from tests.conftest import free_port

pytestmark = pytest.mark.slow


def _fmtrade(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fmtrade", *args], capture_output=True, text=True, timeout=timeout)


def test_up_detached_status_forecast_down(tmp_path: Path, port: int, isolated_home: Path) -> None:
    from fmtrade.data.store import Store
    from fmtrade.data.synthetic import SyntheticSpec, synthesize

    # The service reads symbols from the default store under FMTRADE_HOME (inherited by the subprocesses).
    market = synthesize(["SYNUSDT"], SyntheticSpec(hours=300, start="2024-01-01", seed=3))
    Store(str(isolated_home / "store")).write_bars("linear", "SYNUSDT", "60", market.bars["SYNUSDT"])
    config = tmp_path / "serve.yaml"
    small = {"num_cpus": 0.1}
    # The model replica alone reserves every CPU Ray counts here: the embedded Ray must count more.
    whole_machine = {"num_cpus": float(ray_cpu_count())}
    app = {"models": ["random-walk"], "model_defaults": whole_machine, "ensemble": small, "ingress": small}
    config.write_text(yaml.safe_dump({"applications": [{"name": "fmtrade", "import_path": "fmtrade.serve.app:build_app",
                                                        "route_prefix": "/", "args": app}]}))  # fmt: skip
    up = _fmtrade("serve", "up", "--detach", "--address", "local", "--config", str(config), "--port", str(port),
                  "--json")  # fmt: skip
    try:
        assert up.returncode == 0, up.stderr[-2000:]
        started = json.loads(up.stdout)
        assert started["url"] == f"http://127.0.0.1:{port}" and started["ready"]["ready"] is True
        status = _fmtrade("serve", "status", "--json")
        assert status.returncode == 0, status.stderr[-2000:]
        assert json.loads(status.stdout)["running"] is True
        human = _fmtrade("serve", "status")
        assert human.returncode == 0, human.stderr[-2000:]
        assert human.stdout.splitlines()[:3] == [f"url: {started['url']}", f"pid {started['pid']}: running",
                                                 "  random-walk: ok"]  # fmt: skip
        again = _fmtrade("serve", "up", "--detach", "--config", str(config), "--port", str(port + 1))
        assert again.returncode == 2
        assert again.stderr.strip().splitlines()[-1] == (
            f"error: a detached service already runs at {started['url']} (pid {started['pid']}); "
            "stop it first with `fmtrade serve down`"
        )
        doc = forecast_remote(started["url"], context=[100.0, 101.0, 100.5, 102.0, 101.5, 103.0], horizon=3)
        assert list(doc["models"]) == ["random-walk"] and len(doc["ensemble"]["mean"]) == 3
        cli = _fmtrade("forecast", "--url", started["url"], "--symbol", "SYNUSDT", "--horizon", "4", "--context",
                       "128", "--json")  # fmt: skip
        assert cli.returncode == 0, cli.stderr[-2000:]
        remote = json.loads(cli.stdout)
        assert remote["symbol"] == "SYNUSDT" and len(remote["timestamps"]) == 4 and "random-walk" in remote["models"]
        unknown = _fmtrade("forecast", "--url", started["url"], "--symbol", "NOPEUSDT", "--json")
        assert unknown.returncode == 2 and "NOPEUSDT" in unknown.stderr
        assert "so they share its cores" in (isolated_home / "serve" / "serve.log").read_text()
    finally:
        down = _fmtrade("serve", "down", "--json")
    assert down.returncode == 0, down.stderr[-2000:]
    assert json.loads(down.stdout)["stopped"] is True
    log = (isolated_home / "serve" / "serve.log").read_text()
    assert "Traceback" not in log and "(raylet)" not in log, log[-2000:]  # it stopped cleanly


def test_a_start_that_cannot_finish_says_why_and_leaves_nothing_running(
    tmp_path: Path, port: int, isolated_home: Path
) -> None:
    """A replica that can never be placed (64 GPUs) made ``up`` wait for good inside Serve's own
    deploy call. Now the service gives up after ``--ready-timeout``, says what is not running, and
    the detached command reports it from the service's log and leaves no process or state behind."""
    config = tmp_path / "serve.yaml"
    small = {"num_cpus": 0.1}
    app = {"models": ["random-walk"], "model_defaults": {**small, "num_gpus": 64}, "ensemble": small,
           "ingress": small}  # fmt: skip
    config.write_text(yaml.safe_dump({"applications": [{"name": "fmtrade", "import_path": "fmtrade.serve.app:build_app",
                                                        "route_prefix": "/", "args": app}]}))  # fmt: skip
    up = _fmtrade("serve", "up", "--detach", "--address", "local", "--config", str(config), "--port", str(port),
                  "--ready-timeout", "10", timeout=300)  # fmt: skip
    assert up.returncode == 2
    last = up.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the service process exited before it was ready (its log ")
    assert "not ready after 10s" in last and last.endswith("not running: model-random-walk UPDATING)")
    assert not (isolated_home / "serve" / "state.json").exists()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_a_model_that_cannot_load_is_reported_while_the_others_serve(
    tmp_path: Path, port: int, isolated_home: Path
) -> None:
    """A checkpoint that no longer loads: its member's replica stays up and answers with the reason
    (docs/RELIABILITY.md), so the application deploys, `serve up` warns with the reason and the
    rebuild command, /readyz lists it, and the other members answer."""
    built = _fmtrade("models", "build", "--only", "chronos-bolt-fm-tiny", "--pretrain-minutes", "0", "--json")
    assert built.returncode == 0, built.stderr[-2000:]
    (isolated_home / "zoo" / "chronos-bolt-fm-tiny" / "model.safetensors").write_bytes(b"not a checkpoint")
    config = tmp_path / "serve.yaml"
    small = {"num_cpus": 0.1}
    app = {"models": ["chronos-bolt-fm-tiny", "naive"], "model_defaults": small, "ensemble": small, "ingress": small}
    config.write_text(yaml.safe_dump({"applications": [{"name": "fmtrade", "import_path": "fmtrade.serve.app:build_app",
                                                        "route_prefix": "/", "args": app}]}))  # fmt: skip
    up = _fmtrade(
        "serve", "up", "--detach", "--address", "local", "--config", str(config), "--port", str(port), timeout=300
    )
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        warning = next(line for line in up.stderr.splitlines() if line.startswith("warning: chronos-bolt-fm-tiny: "))
        assert "failed to load" in warning and "model.safetensors" in warning
        assert "fmtrade models build --only chronos-bolt-fm-tiny --force" in warning
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=30).json()
        assert ready["ready"] and ready["models"]["naive"] == "ok"
        doc = forecast_remote(f"http://127.0.0.1:{port}", context=[float(x) for x in range(100, 164)], horizon=4)
        assert list(doc["models"]) == ["naive"] and "model.safetensors" in doc["failed"]["chronos-bolt-fm-tiny"]
    finally:
        assert _fmtrade("serve", "down", timeout=300).returncode == 0


def test_bad_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    missing = _fmtrade("serve", "up", "--config", str(tmp_path / "nope.yaml"), timeout=120)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1].startswith("error: serve config")


def test_a_dead_cluster_address_is_reported_at_once(
    tmp_path: Path, isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cluster stopped without ``ray stop`` leaves its address in Ray's address file, and Ray's
    driver retries a dead GCS for good (here: over 10 minutes). Without ``--address`` that file is
    ignored with a warning; ``--address auto`` or a dead ``host:port`` is a one-line error.
    Ray's temp dir is moved into tmp_path, so the machine's own address file is not touched."""
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    address_file = tmp_path / "ray" / "ray_current_cluster"
    address_file.parent.mkdir()
    dead = f"127.0.0.1:{free_port()}"
    address_file.write_text(dead)
    implicit = _fmtrade("serve", "status", timeout=120)
    assert implicit.returncode == 2
    assert implicit.stderr.strip().splitlines()[-1] == (
        "error: no fmtrade service or Ray cluster is running; start it with `fmtrade serve up`"
    )
    assert f"{address_file} (a cluster stopped without `ray stop`" in implicit.stderr  # the warning
    auto = _fmtrade("serve", "status", "--address", "auto", timeout=120)
    assert auto.returncode == 2
    last = auto.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no Ray cluster answers at ") and str(address_file) in last
    explicit = _fmtrade("serve", "down", "--address", dead, timeout=120)
    assert explicit.returncode == 2
    assert explicit.stderr.strip().splitlines()[-1] == f"error: no Ray cluster answers at {dead}"
