"""Shared fixtures: every test runs with its own FMTRADE_HOME so nothing touches ~/.fmtrade."""

from __future__ import annotations

import socket
from pathlib import Path

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


@pytest.fixture
def port() -> int:
    return free_port()


needs_shared = pytest.mark.skipif(not SHARED_DATA.exists(), reason="../shared/data is not present (fresh clone)")
