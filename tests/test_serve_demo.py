"""The demo's serving step: start the service on a store, query each symbol over HTTP, stop it."""

from __future__ import annotations

from pathlib import Path

import pytest

from fmtrade.config import load_settings
from fmtrade.data.store import Store
from fmtrade.data.synthetic import SyntheticSpec, synthesize

pytestmark = pytest.mark.slow


def test_forecast_via_service_returns_the_80_percent_interval(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    from fmtrade.serve.demo import forecast_via_service, interval_rows

    symbols = ["SYNAUSDT", "SYNBUSDT"]
    store = Store(str(tmp_path / "store"))
    for symbol, bars in synthesize(symbols, SyntheticSpec(hours=600, seed=2)).bars.items():
        store.write_bars("linear", symbol, "60", bars)
    docs = forecast_via_service(load_settings(), symbols, store.root, horizon=6, models=["random-walk", "naive"])
    assert not ray.is_initialized()  # it started Ray, so it stopped it
    rows = interval_rows(docs)
    assert [r["symbol"] for r in rows] == symbols
    for row, symbol in zip(rows, symbols, strict=True):
        assert row["q10"] < row["median"] < row["q90"]
        assert row["last"] == pytest.approx(store.read(symbol, "60")["close"].iloc[-1])
        assert row["models"] == 2 and row["failed"] == "-"
