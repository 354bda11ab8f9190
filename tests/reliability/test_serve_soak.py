"""bench/serve_soak.py for a few seconds, as CI runs it: the real script on a real Serve app."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

pytest.importorskip("ray.serve")
pytest.importorskip("aiohttp")


def test_short_soak_has_no_error_and_reports_every_window_and_replica(tmp_path) -> None:
    command = [
        sys.executable, str(REPO / "bench" / "serve_soak.py"), "--model", "random-walk", "--clients", "16",
        "--seconds", "6", "--warmup-s", "2", "--json",
    ]  # fmt: skip
    env = {**os.environ, "FMTRADE_HOME": str(tmp_path / "home")}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(done.stdout)
    assert doc["errors"] == 0 and doc["errors_by_kind"] == {}, doc["errors_by_kind"]
    assert [w["window"] for w in doc["windows"]] == [0, 1, 2, 3]  # 6 s in windows of 1.5 s
    assert all(w["requests"] > 0 and w["p99_ms"] >= w["p50_ms"] > 0 for w in doc["windows"]), doc["windows"]
    assert sum(w["requests"] for w in doc["windows"]) == doc["requests"] > 0
    deployments = sorted(name.split("#")[0] for name in doc["replica_memory"])
    assert deployments == ["api", "ensemble", "model-random-walk"]
    for memory in doc["replica_memory"].values():
        assert memory["start_mb"] > 50 and memory["end_mb"] > 50  # a Python process with Ray and torch loaded
    assert doc["replicas_replaced"] == [] and doc["targets"]["zero_errors"]
