"""Shared fixtures: every test runs with its own FMTRADE_HOME so nothing touches ~/.fmtrade."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "binance_spot_1h"


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "fmtrade-home"
    monkeypatch.setenv("FMTRADE_HOME", str(home))
    for var in ("FMTRADE_CONFIG", "FMTRADE_STORE", "FMTRADE_API_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    return home


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def kill_node(raylet: psutil.Process) -> None:
    """SIGKILL a Ray node: its raylet and everything it started, at once, as a lost machine would
    (killing the raylet alone leaves its workers running their calls for a while)."""
    tree = [raylet, *raylet.children(recursive=True)]
    for proc in tree:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(tree, timeout=30)


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def s3_root(monkeypatch, port):
    """A real S3 API (moto in server mode) on 127.0.0.1; s3fs and pyarrow find it through AWS_ENDPOINT_URL."""
    boto3 = pytest.importorskip("boto3")
    s3fs = pytest.importorskip("s3fs")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for key, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }.items():
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="fmtrade-test")
    yield "s3://fmtrade-test/store"
    s3fs.S3FileSystem.clear_instance_cache()
    httpx.post(f"{endpoint}/moto-api/reset")  # moto keeps its buckets in-process, across servers
    server.stop()


needs_shared = pytest.mark.skipif(not SHARED_DATA.exists(), reason="../shared/data is not present (fresh clone)")


@pytest.fixture(scope="session")
def market_store(tmp_path_factory: pytest.TempPathFactory):
    """A store with two synthetic linear symbols: 2500 hourly bars from 2022-01-01, their 8-hourly
    funding, and 450 hourly open-interest points (written once per session; treat as read-only)."""
    import numpy as np
    import pandas as pd

    from fmtrade.data.store import Store
    from fmtrade.data.synthetic import SyntheticSpec, synthesize

    store = Store(str(tmp_path_factory.mktemp("market-store")))
    market = synthesize(["AAAUSDT", "BBBUSDT"], SyntheticSpec(hours=2500, start="2022-01-01", seed=7))
    for symbol, bars in market.bars.items():
        store.write_bars("linear", symbol, "60", bars)
        store.write_funding("linear", symbol, market.funding[symbol])
        index = bars.index[:450]
        store.write_open_interest(
            "linear", symbol, "1h", pd.DataFrame({"open_interest": np.linspace(1e6, 2e6, 450)}, index=index)
        )
    return store


@pytest.fixture(scope="module")
def _replay_server(market_store):
    """One replay server over ``market_store`` per test module (starting one per test costs seconds)."""
    from fmtrade.data.replay import ReplayServer

    with ReplayServer(market_store) as server:
        yield server


@pytest.fixture
def server(_replay_server):
    """The module's replay server with no fault, the real clock and an empty request log."""
    _replay_server.faults = None
    _replay_server.now = None
    _replay_server.reset_log()
    return _replay_server


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the real ``fmtrade`` entry point in-process; returns (exit code, stdout, stderr)."""
    from fmtrade.cli import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err
