"""The Bybit client against fmtrade's replay server on 127.0.0.1 (real HTTP both ways, faults injected)."""

from __future__ import annotations

import threading
import time

import httpx
import pandas as pd
import pytest

from fmtrade.config import DataSettings
from fmtrade.data.bybit import BybitClient, BybitError, BybitUnavailableError, parse_time
from fmtrade.data.ratelimit import RateLimiter
from fmtrade.data.replay import Faults, ReplayServer
from fmtrade.errors import InputError

SYMBOL = "AAAUSDT"


def make_client(server: ReplayServer, **kwargs) -> BybitClient:
    options = {"rate_limiter": None, "backoff_base_s": 0.01, "backoff_max_s": 0.05, "timeout_s": 5.0} | kwargs
    return BybitClient(server.url, **options)


def kline_requests(server: ReplayServer) -> int:
    return server.request_counts()["/v5/market/kline"]


def test_klines_paginate_2500_bars_in_three_pages(server: ReplayServer, market_store) -> None:
    stored = market_store.read(SYMBOL, "60")
    assert len(stored) == 2500
    with make_client(server) as client:
        pages = list(client.iter_klines("linear", SYMBOL, "60", stored.index[0], stored.index[-1]))
        whole = client.klines("linear", SYMBOL, "60", stored.index[0], stored.index[-1])
    assert [len(p) for p in pages] == [1000, 1000, 500]
    assert all(p.index.is_monotonic_increasing for p in pages)
    assert pages[0].index[-1] + pd.Timedelta(hours=1) == pages[1].index[0]  # no bar lost or repeated at a boundary
    pd.testing.assert_frame_equal(whole, stored)
    assert kline_requests(server) == 6


def test_klines_unaligned_range_and_partial_last_page(server: ReplayServer, market_store) -> None:
    start, end = "2022-01-03T10:30:00Z", pd.Timestamp("2022-03-01 05:59", tz="UTC")
    with make_client(server) as client:
        got = client.klines("linear", SYMBOL, "60", start, int(end.value // 1_000_000))
    expected = market_store.read(SYMBOL, "60", start, end)
    assert got.index[0] == pd.Timestamp("2022-01-03 11:00", tz="UTC") and got.index[-1] == end.floor("h")
    pd.testing.assert_frame_equal(got, expected)
    assert kline_requests(server) == 2  # 1387 bars: one full page, one partial


def test_klines_outside_stored_range_are_empty(server: ReplayServer) -> None:
    with make_client(server) as client:
        got = client.klines("linear", SYMBOL, "60", "2020-01-01", "2020-02-01")
    assert got.empty and list(got.columns) == ["open", "high", "low", "close", "volume", "turnover"]
    assert str(got.index.tz) == "UTC" and got.index.name == "timestamp"


def test_open_bar_at_replay_clock_is_served_partial(server: ReplayServer, market_store) -> None:
    stored = market_store.read(SYMBOL, "60")
    open_bar = stored.index[100]
    server.now = open_bar + pd.Timedelta(minutes=15)
    with make_client(server) as client:
        assert client.server_time() == server.now
        got = client.klines("linear", SYMBOL, "60", stored.index[0], stored.index[-1])
    assert got.index[-1] == open_bar  # nothing after the replay clock
    pd.testing.assert_frame_equal(got.iloc[:-1], stored.iloc[:100])
    partial, final = got.iloc[-1], stored.iloc[100]
    assert partial["open"] == final["open"]
    assert partial["volume"] == pytest.approx(final["volume"] / 4)
    assert partial["close"] != final["close"]
    assert partial["high"] >= max(partial["open"], partial["close"]) >= partial["low"]


@pytest.mark.parametrize("fault", ["rate_limit", "http_429", "http_500", "truncate", "corrupt", "delay"])
def test_transient_faults_are_retried_to_an_identical_result(server: ReplayServer, market_store, fault: str) -> None:
    stored = market_store.read(SYMBOL, "60")
    server.faults = Faults(**{f"{fault}_every_n": 2}, delay_s=2.0, reset_ms=10, paths=["/v5/market/kline"])
    with make_client(server, timeout_s=0.75 if fault == "delay" else 5.0) as client:
        got = client.klines("linear", SYMBOL, "60", stored.index[0], stored.index[-1])
    pd.testing.assert_frame_equal(got, stored)
    faults = [r.fault for r in server.requests if r.path == "/v5/market/kline"]
    if fault == "delay":  # a slow machine may time out an undelayed request too; only the result must not change
        assert faults.count("delay") >= 2
    else:
        assert faults == ["ok", fault, "ok", fault, "ok"]  # 3 pages, pages 2 and 3 retried once each


def test_rate_limit_waits_until_reset_timestamp(server: ReplayServer) -> None:
    server.faults = Faults(schedule=["rate_limit"], reset_ms=400)
    with make_client(server, backoff_base_s=0.001, backoff_max_s=5.0) as client:
        began = time.monotonic()
        client.server_time()
        waited = time.monotonic() - began
    assert waited >= 0.35  # backoff alone would be ~1 ms; the X-Bapi-Limit-Reset-Timestamp set the wait
    assert [r.ret_code for r in server.requests] == [10006, 0]


@pytest.mark.parametrize("fault", ["http_500", "truncate", "corrupt"])
def test_attempts_are_bounded(server: ReplayServer, fault: str) -> None:
    server.faults = Faults(**{f"{fault}_every_n": 1})
    with make_client(server, max_attempts=3) as client, pytest.raises(BybitUnavailableError) as info:
        client.klines("linear", SYMBOL, "60", "2022-01-01", "2022-01-02")
    assert info.value.attempts == 3
    assert kline_requests(server) == 3


def test_timeout_exhaustion_raises(server: ReplayServer) -> None:
    server.faults = Faults(delay_every_n=1, delay_s=1.0)
    with make_client(server, max_attempts=2, timeout_s=0.2) as client, pytest.raises(BybitUnavailableError) as info:
        client.server_time()
    assert "timeout" in info.value.last


def test_unknown_symbol_is_a_typed_error_without_retry(server: ReplayServer) -> None:
    with make_client(server) as client, pytest.raises(BybitError) as info:
        client.klines("linear", "NOPEUSDT", "60", "2022-01-01", "2022-01-02")
    assert info.value.ret_code == 10001 and "symbol" in info.value.ret_msg.lower()
    assert "NOPEUSDT" in str(info.value)
    assert kline_requests(server) == 1


def test_interval_not_served_is_a_typed_error_without_retry(server: ReplayServer) -> None:
    with make_client(server) as client, pytest.raises(BybitError) as info:
        client.klines("linear", SYMBOL, "240", "2022-01-01", "2022-01-02")
    assert info.value.ret_code == 10001 and "period" in info.value.ret_msg.lower()
    assert kline_requests(server) == 1


def test_bad_interval_category_and_range_fail_before_any_request(server: ReplayServer) -> None:
    with make_client(server) as client:
        with pytest.raises(InputError, match="interval"):
            client.klines("linear", SYMBOL, "7", "2022-01-01", "2022-01-02")
        with pytest.raises(InputError, match="category"):
            client.klines("futures", SYMBOL, "60", "2022-01-01", "2022-01-02")
        with pytest.raises(InputError, match="end"):
            client.klines("linear", SYMBOL, "60", "2022-02-01", "2022-01-01")
        with pytest.raises(InputError, match="start"):
            client.klines("linear", SYMBOL, "60", "not a date", "2022-01-01")
    assert not server.requests


class StampingTransport(httpx.HTTPTransport):
    """The real HTTP transport, noting when each request leaves the client."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[float] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(time.monotonic())
        return super().handle_request(request)


def test_rate_limiter_bounds_the_request_rate(server: ReplayServer) -> None:
    transport = StampingTransport()
    with make_client(server, rate_limiter=RateLimiter(rate_per_s=40, burst=2), transport=transport) as client:
        for _ in range(22):
            client.server_time()
    sent = transport.sent
    assert len(sent) == 22 and sent[-1] - sent[0] >= (22 - 2) / 40 * 0.95
    # Any 0.25 s window holds at most burst + rate * 0.25 requests (+1: a request sent late after its token).
    for i, t0 in enumerate(sent):
        assert sum(1 for t in sent[i:] if t < t0 + 0.25) <= 2 + 10 + 1


def test_rate_limiter_is_thread_safe() -> None:
    limiter = RateLimiter(rate_per_s=100, burst=1)
    stamps: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(10):
            limiter.acquire()
            with lock:
                stamps.append(time.monotonic())

    threads = [threading.Thread(target=worker) for _ in range(4)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(stamps) == 40
    assert max(stamps) - began >= 39 / 100 * 0.95


def test_rate_limiter_follows_settings() -> None:
    assert RateLimiter.from_settings(DataSettings(rate_limit_enabled=False)) is None
    limiter = RateLimiter.from_settings(DataSettings(rate_limit_per_s=7.0))
    assert limiter is not None and limiter.rate_per_s == 7.0
    client = BybitClient.from_settings(
        DataSettings(rate_limit_per_s=7.0, max_attempts=2), base_url="http://127.0.0.1:9"
    )
    assert client.rate_limiter is not None and client.rate_limiter.rate_per_s == 7.0 and client.max_attempts == 2
    client.close()
    with pytest.raises(InputError, match="rate_per_s"):
        RateLimiter(0)


def test_orderbook_snapshot_and_derived_fields(server: ReplayServer, market_store) -> None:
    stored = market_store.read(SYMBOL, "60")
    server.now = stored.index[-1] + pd.Timedelta(hours=2)  # store ended: the last close is final
    with make_client(server) as client:
        book = client.orderbook("linear", SYMBOL, limit=10)
    raw = httpx.get(f"{server.url}/v5/market/orderbook", params={"category": "linear", "symbol": SYMBOL, "limit": 10})
    result = raw.json()["result"]
    bids = [(float(p), float(q)) for p, q in result["b"]]
    asks = [(float(p), float(q)) for p, q in result["a"]]
    assert book.synthetic is True and result["synthetic"] is True
    assert book.bids == tuple(bids) and book.asks == tuple(asks) and len(bids) == len(asks) == 10
    last_close = stored["close"].iloc[-1]
    tick = asks[0][0] - bids[0][0]
    assert book.mid == pytest.approx((bids[0][0] + asks[0][0]) / 2)
    assert book.spread == pytest.approx(tick) and abs(book.mid - last_close) <= tick
    assert book.bid_volume == pytest.approx(sum(q for _, q in bids))
    assert book.ask_volume == pytest.approx(sum(q for _, q in asks))
    expected_imbalance = (book.bid_volume - book.ask_volume) / (book.bid_volume + book.ask_volume)
    assert book.imbalance == pytest.approx(expected_imbalance) and -1 < book.imbalance < 1
    assert book.ts == server.now


def test_orderbook_depth_is_checked_per_category(server: ReplayServer) -> None:
    with make_client(server) as client:
        with pytest.raises(InputError, match=r"\[1, 500\]"):
            client.orderbook("linear", SYMBOL, limit=501)
        with pytest.raises(InputError, match=r"\[1, 200\]"):
            client.orderbook("spot", SYMBOL, limit=201)
    assert not server.requests


def test_funding_history_paginates_backwards(server: ReplayServer, market_store) -> None:
    stored = market_store.read_funding(SYMBOL)
    assert len(stored) > 300
    with make_client(server) as client:
        got = client.funding_history("linear", SYMBOL, stored.index[0], stored.index[-1])
    pd.testing.assert_frame_equal(got, stored)
    ends = [int(r.params["endTime"]) for r in server.requests]
    assert len(ends) == 2 and ends[1] < ends[0]  # 200 newest first, then the older rest
    with make_client(server) as client, pytest.raises(InputError, match="category"):
        client.funding_history("spot", SYMBOL, "2022-01-01", "2022-02-01")


def test_open_interest_follows_cursor(server: ReplayServer, market_store) -> None:
    stored = market_store.read_open_interest(SYMBOL, "1h")
    with make_client(server) as client:
        got = client.open_interest("linear", SYMBOL, "1h", stored.index[0], stored.index[-1])
        with pytest.raises(InputError, match="interval_time"):
            client.open_interest("linear", SYMBOL, "2h", stored.index[0], stored.index[-1])
    pd.testing.assert_frame_equal(got, stored)
    cursors = [r.params.get("cursor") for r in server.requests]
    assert len(cursors) == 3 and cursors[0] is None and all(cursors[1:])  # 200 + 200 + 50


def test_instruments_and_tickers(server: ReplayServer, market_store) -> None:
    stored = market_store.read("BBBUSDT", "60")
    with make_client(server) as client:
        instruments = {i.symbol: i for i in client.instruments("linear")}
        only = client.instruments("linear", "BBBUSDT")
        tickers = client.tickers("linear", "BBBUSDT")
    assert set(instruments) == {"AAAUSDT", "BBBUSDT"} and [i.symbol for i in only] == ["BBBUSDT"]
    bbb = instruments["BBBUSDT"]
    last = stored["close"].iloc[-1]
    assert bbb.status == "Trading" and bbb.quote_coin == "USDT" and bbb.base_coin == "BBB"
    assert 1e-6 <= bbb.tick_size / last <= 1e-4  # ~5-6 significant digits of the price
    assert 1 <= bbb.qty_step * last <= 10 and bbb.min_qty == bbb.qty_step
    assert bbb.launch_time == stored.index[0]
    assert len(tickers) == 1 and float(tickers[0]["lastPrice"]) == last
    assert float(tickers[0]["highPrice24h"]) == stored["high"].iloc[-24:].max()


def test_parse_time_accepts_the_documented_forms() -> None:
    expected = pd.Timestamp("2024-01-02 03:00", tz="UTC")
    for value in (expected, expected.to_pydatetime(), "2024-01-02T03:00:00Z", "2024-01-02 03:00", 1704164400000):
        assert parse_time(value, "start") == expected
    with pytest.raises(InputError, match="start"):
        parse_time([1], "start")
