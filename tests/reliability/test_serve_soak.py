"""bench/serve_soak.py's measurement for a few seconds against the shared served application
(tests/reliability/conftest.py): its soak, per-window and replica-memory code on a real Serve app."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest

from tests.conftest import REPO
from tests.reliability.conftest import HEALTHY, replica_pids

pytestmark = pytest.mark.slow

pytest.importorskip("ray.serve")
pytest.importorskip("aiohttp")
sys.path.insert(0, str(REPO / "bench"))
from serve_load import build_load, contexts  # noqa: E402  (bench/ is not a package)
from serve_soak import replica_rss, soak, summarise  # noqa: E402


def test_short_soak_has_no_error_and_reports_every_window_and_replica(served: dict[str, Any]) -> None:
    load = build_load(contexts(64, 256), 1, HEALTHY[0])
    before = replica_rss(served["app"])
    done, errors, samples = asyncio.run(soak(served["url"], 16, 6.0, load, served["app"], 1.5))
    doc = summarise(done, errors, 6.0, 1.5, before, replica_rss(served["app"]), samples)
    assert doc["errors"] == 0 and doc["errors_by_kind"] == {}, doc["errors_by_kind"]
    assert [w["window"] for w in doc["windows"]] == [0, 1, 2, 3]
    assert all(w["requests"] > 0 and w["p99_ms"] >= w["p50_ms"] > 0 for w in doc["windows"]), doc["windows"]
    assert all(0 <= w["other_processes_cpu_pct"] <= 100 for w in doc["windows"]), doc["windows"]
    assert sum(w["requests"] for w in doc["windows"]) == doc["requests"] > 0
    deployments = sorted(name.split("#")[0] for name in doc["replica_memory"])
    assert deployments == ["api", "ensemble", "model-chronos-bolt-fm-tiny", "model-naive", "model-random-walk"]
    for memory in doc["replica_memory"].values():
        assert memory["start_mb"] > 50 and memory["end_mb"] > 50  # a Python process with Ray and torch loaded
    assert doc["replicas_replaced"] == [] and doc["targets"]["zero_errors"]
    assert replica_pids() == served["replicas"]  # nothing restarted under load
