"""Store.sync against the real Bybit client and the replay server on 127.0.0.1 (no mocks)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fmtrade.data.bybit import BybitClient, BybitError
from fmtrade.data.replay import Faults, ReplayServer
from fmtrade.data.store import Gap, Store
from fmtrade.data.synthetic import SyntheticSpec, synthesize
from fmtrade.errors import InputError
from tests.conftest import REPO

SYMBOLS = ["SYNAUSDT", "SYNBUSDT"]
HOUR = pd.Timedelta(hours=1)


def fill_source(root: Path, hours: int, start: str = "2023-11-01", symbols=SYMBOLS) -> Store:
    source = Store(str(root))
    market = synthesize(symbols, SyntheticSpec(hours=hours, seed=7, start=start))
    for symbol in symbols:
        source.write_bars("linear", symbol, "60", market.bars[symbol])
        source.write_funding("linear", symbol, market.funding[symbol])
    return source


def client_for(server: ReplayServer, **kwargs) -> BybitClient:
    options = {"rate_limiter": None, "backoff_base_s": 0.01, "backoff_max_s": 0.05, "timeout_s": 5.0} | kwargs
    return BybitClient(server.url, **options)


@pytest.fixture
def market(tmp_path):
    """A 2 x 2500-bar source store replayed with the clock where its last bar closes."""
    source = fill_source(tmp_path / "source", 2500)
    last = source.read(SYMBOLS[0], "60").index[-1]
    hours = source.read(SYMBOLS[0], "60").index
    source.write_open_interest(
        "linear", SYMBOLS[0], "1h", pd.DataFrame({"open_interest": np.arange(len(hours)) + 1e4}, index=hours)
    )
    with ReplayServer(source, now=last + HOUR) as server, client_for(server) as client:
        yield source, server, client


def kline_requests(server: ReplayServer) -> list[dict[str, str]]:
    return [r.params for r in server.requests if r.path == "/v5/market/kline"]


def test_full_sync_copies_source_exactly(tmp_path, market):
    source, server, client = market
    dest = Store(str(tmp_path / "dest"))
    seen: list[tuple[str, int, int]] = []
    report = dest.sync(
        client, "linear", SYMBOLS, "60", "2023-11-01", open_interest="1h", progress=lambda *a: seen.append(a)
    )
    oi = dest.read_open_interest(SYMBOLS[0], "1h")
    pd.testing.assert_frame_equal(oi, source.read_open_interest(SYMBOLS[0], "1h"))
    assert report.symbols[0].new_open_interest == 2500 and report.symbols[1].new_open_interest == 0
    for symbol, result in zip(SYMBOLS, report.symbols, strict=True):
        pd.testing.assert_frame_equal(dest.read(symbol, "60"), source.read(symbol, "60"))
        pd.testing.assert_frame_equal(dest.read_funding(symbol), source.read_funding(symbol))
        assert (result.fetched_bars, result.new_bars, result.pages, result.gaps) == (2500, 2500, 3, 0)
    # Pages of 1000, 1000 and a partial last page of 500, each committed and reported.
    assert [s[1] for s in seen if s[0] == SYMBOLS[0]] == [1000, 2000, 2500]
    assert all(expected == 2500 for _, _, expected in seen)
    assert report.new_bars == 5000 and report.bars_per_s > 0


def test_up_to_date_sync_fetches_nothing(tmp_path, market):
    _, server, client = market
    dest = Store(str(tmp_path / "dest"))
    dest.sync(client, "linear", SYMBOLS, "60", "2023-11-01")
    server.reset_log()
    report = dest.sync(client, "linear", SYMBOLS, "60", "2023-11-01")
    assert kline_requests(server) == []
    assert report.fetched_bars == 0 and report.new_bars == 0


def test_incremental_sync_fetches_only_the_missing_ends(tmp_path, market):
    source, server, client = market
    dest = Store(str(tmp_path / "dest"))
    index = source.read(SYMBOLS[0], "60").index
    dest.sync(client, "linear", SYMBOLS[:1], "60", index[1000], index[1999])
    assert dest.bounds(SYMBOLS[0], "60") == (index[1000], index[1999])
    server.reset_log()
    report = dest.sync(client, "linear", SYMBOLS[:1], "60", index[0])
    requested = kline_requests(server)
    # Forward from the bar after the last stored one; back-fill stops right before the first.
    assert int(requested[0]["start"]) == index[2000].value // 1_000_000
    assert all(int(p["end"]) < index[1000].value // 1_000_000 for p in requested[1:])
    assert report.symbols[0].fetched_bars == 1500
    pd.testing.assert_frame_equal(dest.read(SYMBOLS[0], "60"), source.read(SYMBOLS[0], "60"))


def test_backfill_joins_up_with_the_stored_series(tmp_path, market):
    source, _, client = market
    dest = Store(str(tmp_path / "dest"))
    index = source.read(SYMBOLS[0], "60").index
    dest.sync(client, "linear", SYMBOLS[:1], "60", index[1500])
    dest.sync(client, "linear", SYMBOLS[:1], "60", index[200], index[300])  # earlier window
    assert dest.bounds(SYMBOLS[0], "60") == (index[200], index[-1])
    assert dest.gaps(SYMBOLS[0], "60") == []


def test_still_open_bar_is_never_stored(tmp_path, market):
    source, server, client = market
    dest = Store(str(tmp_path / "dest"))
    index = source.read(SYMBOLS[0], "60").index
    server.now = index[-1] + pd.Timedelta(minutes=30)  # the last bar is half done
    # The server does serve the open bar (with a provisional close) ...
    open_bar = client.klines("linear", SYMBOLS[0], "60", index[-1], index[-1])
    assert open_bar.index[-1] == index[-1]
    assert open_bar["close"].iloc[-1] != source.read(SYMBOLS[0], "60")["close"].iloc[-1]
    # ... but sync stops at the last closed bar, even when asked for more.
    dest.sync(client, "linear", SYMBOLS[:1], "60", index[0], index[-1] + HOUR)
    assert dest.bounds(SYMBOLS[0], "60")[1] == index[-2]
    server.now = index[-1] + HOUR
    report = dest.sync(client, "linear", SYMBOLS[:1], "60", index[0])
    assert report.symbols[0].new_bars == 1
    pd.testing.assert_frame_equal(dest.read(SYMBOLS[0], "60"), source.read(SYMBOLS[0], "60"))


def test_exchange_outages_are_reported_not_filled_or_refetched(tmp_path):
    source = fill_source(tmp_path / "source", 1500, symbols=SYMBOLS[:1])
    bars = source.read(SYMBOLS[0], "60")
    outage = bars.index[700:705]
    holed = Store(str(tmp_path / "holed"))
    holed.write_bars("linear", SYMBOLS[0], "60", bars.drop(outage))
    with ReplayServer(holed, now=bars.index[-1] + HOUR) as server, client_for(server) as client:
        dest = Store(str(tmp_path / "dest"))
        report = dest.sync(client, "linear", SYMBOLS[:1], "60", bars.index[0], funding=False)
        assert report.symbols[0].gaps == 1
        assert dest.gaps(SYMBOLS[0], "60") == [Gap(outage[0], outage[-1], 5)]
        assert len(dest.read(SYMBOLS[0], "60")) == 1495
        server.reset_log()
        dest.sync(client, "linear", SYMBOLS[:1], "60", bars.index[0], funding=False)
        assert kline_requests(server) == []


def test_injected_faults_still_give_an_identical_store(tmp_path, market):
    source, server, client = market
    server.faults = Faults(
        schedule=["ok", "rate_limit", "http_500", "ok", "truncate", "delay", "ok", "corrupt", "http_429"],
        rate_limit_every_n=5,
        http_500_every_n=7,
        delay_s=0.6,
    )
    with client_for(server, timeout_s=0.3, max_attempts=8) as faulty:
        dest = Store(str(tmp_path / "dest"))
        dest.sync(faulty, "linear", SYMBOLS, "60", "2023-11-01")
    assert {r.fault for r in server.requests} >= {"rate_limit", "http_500", "http_429", "truncate", "corrupt", "delay"}
    for symbol in SYMBOLS:
        pd.testing.assert_frame_equal(dest.read(symbol, "60"), source.read(symbol, "60"))
        pd.testing.assert_frame_equal(dest.read_funding(symbol), source.read_funding(symbol))


def test_bad_symbol_and_interval_are_typed_errors(tmp_path, market):
    _, _, client = market
    dest = Store(str(tmp_path / "dest"))
    with pytest.raises(BybitError) as info:
        dest.sync(client, "linear", ["NOSUCHUSDT"], "60", "2023-11-01")
    assert info.value.ret_code == 10001
    with pytest.raises(InputError, match="interval"):
        dest.sync(client, "linear", SYMBOLS, "61", "2023-11-01")
    with pytest.raises(InputError, match="start"):
        dest.sync(client, "linear", SYMBOLS, "60", "yesterday-ish")
    assert dest.series() == []


KILLABLE_SYNC = textwrap.dedent("""
    import sys
    from fmtrade.data.bybit import BybitClient
    from fmtrade.data.store import Store
    url, dest, start = sys.argv[1:4]
    with BybitClient(url, rate_limiter=None, timeout_s=30) as client:
        Store(dest).sync(client, "linear", ["SYNAUSDT"], "60", start, funding=False)
""")


def _start_sync(url: str, dest: Path, start: str) -> subprocess.Popen:
    env = os.environ | {"PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", KILLABLE_SYNC, url, str(dest), start],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _assert_prefix(dest: Store, expected: pd.DataFrame) -> int:
    stored = dest.read("SYNAUSDT", "60")
    pd.testing.assert_frame_equal(stored, expected.iloc[: len(stored)])
    return len(stored)


def _wait_for_rows(dest: Store, proc: subprocess.Popen, rows: int) -> None:
    deadline = time.monotonic() + 60
    while len(dest.read("SYNAUSDT", "60")) < rows:
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "sync made no progress"
        time.sleep(0.01)


@pytest.mark.slow
def test_killed_sync_keeps_every_committed_page(tmp_path):
    # 10 pages of 1000 bars; the third page straddles the 2023 and 2024 files.
    source = fill_source(tmp_path / "source", 10_000, start="2023-10-01", symbols=["SYNAUSDT"])
    expected = source.read("SYNAUSDT", "60")
    dest_root = tmp_path / "dest"
    dest = Store(str(dest_root))
    faults = Faults(delay_every_n=1, delay_s=0.15, paths=["/v5/market/kline"])
    with ReplayServer(source, now=expected.index[-1] + HOUR, faults=faults) as server:
        proc = _start_sync(server.url, dest_root, "2023-10-01")
        _wait_for_rows(dest, proc, 2000)  # at least two pages committed
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        committed = _assert_prefix(dest, expected)
        assert 2000 <= committed < 10_000
        assert dest.gaps("SYNAUSDT", "60") == []

        # Kill again at staggered moments after a commit, so some kills land inside the next commit.
        server.faults = Faults(delay_every_n=1, delay_s=0.02, paths=["/v5/market/kline"])
        for extra_s in (0.0, 0.015, 0.03):
            proc = _start_sync(server.url, dest_root, "2023-10-01")
            _wait_for_rows(dest, proc, committed + 1)
            time.sleep(extra_s)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            committed = _assert_prefix(dest, expected)
            assert all(not p.name.startswith(".") for p in dest_root.rglob("*.parquet"))
        assert committed < 10_000

        with BybitClient(server.url, rate_limiter=None) as client:
            report = dest.sync(client, "linear", ["SYNAUSDT"], "60", "2023-10-01", funding=False)
    assert report.symbols[0].fetched_bars == 10_000 - committed
    pd.testing.assert_frame_equal(dest.read("SYNAUSDT", "60"), expected)
    assert not list(dest_root.rglob("*.tmp"))  # the re-run removed anything a killed writer left


@pytest.mark.slow
def test_s3_store_round_trips_and_syncs(s3_root, market):
    source, server, client = market
    dest = Store(s3_root)
    report = dest.sync(client, "linear", SYMBOLS, "60", "2023-11-01")
    assert report.new_bars == 5000
    for symbol in SYMBOLS:
        pd.testing.assert_frame_equal(dest.read(symbol, "60"), source.read(symbol, "60"))
        pd.testing.assert_frame_equal(dest.read_funding(symbol), source.read_funding(symbol))
    reopened = Store(s3_root)  # a fresh handle sees the same committed objects
    assert [k.symbol for k in reopened.series()] == SYMBOLS
    keys = reopened.fs.find("fmtrade-test/store")
    assert keys and all(k.endswith(".parquet") for k in keys)
    assert any("/bars/category=linear/symbol=SYNAUSDT/interval=60/2024.parquet" in k for k in keys)
    server.reset_log()
    assert reopened.sync(client, "linear", SYMBOLS, "60", "2023-11-01").fetched_bars == 0
    assert kline_requests(server) == []
    partial = reopened.read(SYMBOLS[0], "60").iloc[:-10]
    assert reopened.gaps(SYMBOLS[0], "60", end=partial.index[-1]) == []
