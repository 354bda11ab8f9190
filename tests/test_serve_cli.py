"""``fmtrade serve up --detach`` / ``status`` / ``down`` as a user runs them (real processes, real Ray)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fmtrade.client import forecast_remote

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
    app = {"models": ["random-walk"], "model_defaults": small, "ensemble": small, "ingress": small}
    config.write_text(yaml.safe_dump({"applications": [{"name": "fmtrade", "import_path": "serve.app:build_app",
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
        doc = forecast_remote(started["url"], context=[100.0, 101.0, 100.5, 102.0, 101.5, 103.0], horizon=3)
        assert list(doc["models"]) == ["random-walk"] and len(doc["ensemble"]["mean"]) == 3
        cli = _fmtrade("forecast", "--url", started["url"], "--symbol", "SYNUSDT", "--horizon", "4", "--context",
                       "128", "--json")  # fmt: skip
        assert cli.returncode == 0, cli.stderr[-2000:]
        remote = json.loads(cli.stdout)
        assert remote["symbol"] == "SYNUSDT" and len(remote["timestamps"]) == 4 and "random-walk" in remote["models"]
        unknown = _fmtrade("forecast", "--url", started["url"], "--symbol", "NOPEUSDT", "--json")
        assert unknown.returncode == 2 and "NOPEUSDT" in unknown.stderr
    finally:
        down = _fmtrade("serve", "down", "--json")
    assert down.returncode == 0, down.stderr[-2000:]
    assert json.loads(down.stdout)["stopped"] is True


def test_bad_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    missing = _fmtrade("serve", "up", "--config", str(tmp_path / "nope.yaml"), timeout=120)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1].startswith("error: serve config")
