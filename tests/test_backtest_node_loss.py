"""Inference pools that filled the cluster, when a node is lost: Ray restarts the node's actors
elsewhere, but the survivors hold every slot, so the restarts wait for good unless the driver
re-plans. This test makes that case certain (one pool of four half-CPU actors on two one-CPU
nodes, every actor busy when the node goes) and checks the forecasts are unchanged."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import ray
from ray.cluster_utils import Cluster

from fmtrade.backtest.windows import plan_windows
from fmtrade.jobs.backtest import PoolOptions, forecast_all
from tests.backtest_support import DriftForecaster, synthetic_markets
from tests.conftest import kill_node
from tests.test_backtest_results import CONFIG

pytestmark = pytest.mark.slow


class GatedForecaster(DriftForecaster):
    """The drift model, held at the gate: each call marks ``started/<pid>`` and waits while the
    ``gate`` file exists, so the test knows every actor is mid-call when it removes a node."""

    def __init__(self, gate: str) -> None:
        super().__init__()
        self.gate = Path(gate)

    def _predict(self, *args):
        (self.gate.parent / "started" / str(os.getpid())).touch()
        while self.gate.exists():
            time.sleep(0.05)
        return super()._predict(*args)


@pytest.mark.timeout(300)
def test_pools_that_filled_the_cluster_are_replanned_after_a_node_is_lost(tmp_path: Path, caplog) -> None:
    (tmp_path / "started").mkdir()
    gate = tmp_path / "gate"
    market = synthetic_markets(("AAA",), hours=1600)["AAA"]
    assets = [(market, plan_windows(market, CONFIG))]
    factories = {"drift": lambda: GatedForecaster(str(gate))}
    options = PoolOptions(actors=4, num_cpus=0.5, chunk_size=16)  # 9 chunks; 4 x 0.5 CPU: both nodes full
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    try:
        ray.init(address=cluster.address)
        cluster.wait_for_nodes()
        calm = forecast_all(assets, factories, CONFIG, options)["drift"]["AAA"]
        for marker in (tmp_path / "started").iterdir():
            marker.unlink()
        gate.touch()
        results: list = []
        job = lambda: results.append(forecast_all(assets, factories, CONFIG, options))  # noqa: E731
        run = threading.Thread(target=job, daemon=True)
        with caplog.at_level(logging.WARNING, logger="fmtrade.jobs.backtest"):
            run.start()  # a daemon: a hung job fails the test below instead of blocking its end
            try:
                deadline = time.monotonic() + 120
                while len(list((tmp_path / "started").iterdir())) < 4:  # every actor inside a call
                    assert time.monotonic() < deadline, "the four actors never all started"
                    time.sleep(0.1)
                kill_node(psutil.Process(workers[0].all_processes["raylet"][0].process.pid))
                cluster.remove_node(workers[0], allow_graceful=False)
            finally:
                gate.unlink()
            run.join(timeout=200)
        assert not run.is_alive(), "inference never finished after the node was lost"
        faulted = results[0]["drift"]["AAA"]
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert "re-planning inference for drift" in caplog.text, caplog.text
    np.testing.assert_array_equal(faulted.quantiles, calm.quantiles)
    np.testing.assert_array_equal(faulted.mean, calm.mean)
