"""One Serve application shared by the reliability tests that need a served API (starting Serve
costs a minute on 2 cores): the fuzz, the damaged-checkpoint member and the short soak.

Members: two baselines, and the Chronos-Bolt zoo model whose weights file is truncated after the
zoo is built, so the application always carries one member that cannot load.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port

HEALTHY = ["random-walk", "naive"]
BROKEN = "chronos-bolt-fm-tiny"
SYMBOL = "SYNAUSDT"


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.fixture(scope="package")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The application on a free loopback port: ``url``, ``app``, the broken member's ``weights``
    file and the replica actors after start-up (``replicas``, see :func:`replica_pids`)."""
    ray = pytest.importorskip("ray")
    serve = pytest.importorskip("ray.serve")
    from fmtrade.config import load_settings
    from fmtrade.data.store import Store
    from fmtrade.data.synthetic import SyntheticSpec, synthesize
    from fmtrade.jobs.ray_runtime import fast_path_env, start_local_ray
    from fmtrade.models.zoo import build_zoo
    from fmtrade.serve.app import build_app

    home = tmp_path_factory.mktemp("reliability-home")
    overrides = {"home": str(home)}
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FMTRADE_HOME", str(home))  # replicas inherit the environment Ray starts with
        env.delenv("FMTRADE_API_TOKEN", raising=False)
        for key, value in fast_path_env().items():  # the settings `fmtrade serve up` runs with
            env.setenv(key, os.environ.get(key, value))  # a switch set by the caller stays (e.g. no HAProxy)
        settings = load_settings(None, overrides)
        build_zoo(settings, only=[BROKEN], use_shipped=True)  # what `fmtrade models build` does: hashes recorded
        weights = settings.zoo_dir() / BROKEN / "model.safetensors"
        truncate(weights)
        store = Store(settings.store_uri())
        store.write_bars("linear", SYMBOL, "60", synthesize([SYMBOL], SyntheticSpec(hours=600, seed=5)).bars[SYMBOL])
        small = {"num_cpus": 0.1, "max_ongoing_requests": 64}
        args = {
            "settings": overrides,
            "models": [*HEALTHY, BROKEN],
            "model_defaults": small,
            "ensemble": {**small, "timeout_s": 5.0},
            "ingress": small,
            "limits": {"max_context_points": 2048, "max_horizon": 256, "max_series": 16},
            "max_body_bytes": 200_000,
        }
        port = free_port()
        start_local_ray(num_cpus=2)
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            serve.run(build_app(args), name="fmtrade", route_prefix="/", blocking=False)
            url = f"http://127.0.0.1:{port}"
            _wait_answering(url)
            yield {"url": url, "app": "fmtrade", "weights": weights, "replicas": replica_pids()}
        finally:
            serve.shutdown()
            ray.shutdown()


def _wait_answering(url: str, timeout_s: float = 300.0) -> None:
    """Until the ingress answers a forecast from a healthy member."""
    deadline = time.monotonic() + timeout_s
    body = {"context": [100.0 + i for i in range(64)], "horizon": 4, "models": HEALTHY}
    while time.monotonic() < deadline:
        try:
            if httpx.post(f"{url}/v1/forecast", json=body, timeout=30).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    raise AssertionError(f"{url} did not answer within {timeout_s:g}s")


def replica_pids() -> dict[str, tuple[int, int]]:
    """The alive Serve replica actors of this Ray: actor id -> (PID, restarts). A replica that
    crashed and was replaced is a new actor or a restarted one; either changes this."""
    from fmtrade.jobs.ray_runtime import alive_actors

    # The GCS this driver is connected to (other Rays may run on the machine).
    return {actor_id: (info["Pid"], info["NumRestarts"]) for actor_id, info in alive_actors("ServeReplica").items()}
