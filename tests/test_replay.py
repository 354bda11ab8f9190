"""The replay server speaks Bybit v5: paths, params, envelope, ordering, pagination, retCodes, faults."""

from __future__ import annotations

import json
import math

import httpx
import numpy as np
import pandas as pd
import pytest

from fmtrade.data.bybit import BybitClient
from fmtrade.data.replay import SPREAD_PER_DAILY_VOL, Faults, ReplayServer, qty_step, tick_size
from fmtrade.data.store import Store

SYMBOL = "AAAUSDT"
T0 = pd.Timestamp("2022-01-01", tz="UTC")
MS = 1_000_000


def ms(ts: pd.Timestamp) -> int:
    return int(ts.value // MS)


def get(server: ReplayServer, path: str, **params) -> dict:
    response = httpx.get(f"{server.url}/v5/market/{path}", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_envelope_and_server_time(server: ReplayServer) -> None:
    server.now = "2022-02-01T12:34:56Z"
    body = get(server, "time")
    assert set(body) == {"retCode", "retMsg", "result", "retExtInfo", "time"}
    assert body["retCode"] == 0 and body["time"] == ms(server.now)
    assert body["result"] == {"timeSecond": str(ms(server.now) // 1000), "timeNano": str(ms(server.now) * MS)}


def test_kline_rows_are_strings_newest_first_with_default_limit(server: ReplayServer, market_store: Store) -> None:
    stored = market_store.read(SYMBOL, "60")
    result = get(server, "kline", category="linear", symbol=SYMBOL, interval="60")["result"]
    rows = result["list"]
    assert result["symbol"] == SYMBOL and result["category"] == "linear"
    assert len(rows) == 200  # Bybit's default limit
    assert all(isinstance(v, str) for v in rows[0]) and len(rows[0]) == 7
    stamps = [int(r[0]) for r in rows]
    assert stamps == sorted(stamps, reverse=True) and stamps[0] == ms(stored.index[-1])
    newest = [float(v) for v in rows[0][1:]]
    assert newest == stored.iloc[-1].tolist()  # exact round trip of every float


def test_kline_start_and_end_select_the_page(server: ReplayServer) -> None:
    start, end = T0 + pd.Timedelta(hours=10), T0 + pd.Timedelta(hours=2000)
    from_start = get(
        server, "kline", category="linear", symbol=SYMBOL, interval="60", start=ms(start), end=ms(end), limit=1000
    )["result"]["list"]
    assert len(from_start) == 1000
    assert int(from_start[-1][0]) == ms(start) and int(from_start[0][0]) == ms(start + pd.Timedelta(hours=999))
    up_to_end = get(server, "kline", category="linear", symbol=SYMBOL, interval="60", end=ms(end), limit=5)["result"][
        "list"
    ]
    assert [int(r[0]) for r in up_to_end] == [ms(end - pd.Timedelta(hours=h)) for h in range(5)]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"symbol": "NOPEUSDT", "interval": "60"}, "Not supported symbols"),
        ({"symbol": SYMBOL, "interval": "7"}, "Invalid period!"),
        ({"symbol": SYMBOL, "interval": "60", "category": "futures"}, "Illegal category"),
        ({"symbol": SYMBOL, "interval": "60", "limit": "1001"}, "limit"),
        ({"symbol": SYMBOL, "interval": "60", "start": "yesterday"}, "start"),
        ({"interval": "60"}, "symbol"),
    ],
)
def test_kline_parameter_errors_are_10001(server: ReplayServer, params: dict, message: str) -> None:
    body = get(server, "kline", **params)
    assert body["retCode"] == 10001 and message in body["retMsg"] and body["result"] == {}


def test_unknown_path_is_http_404(server: ReplayServer) -> None:
    assert httpx.get(f"{server.url}/v5/market/nothing-here").status_code == 404


def test_replay_clock_hides_the_future_and_opens_the_current_bar(server: ReplayServer, market_store: Store) -> None:
    stored = market_store.read(SYMBOL, "60")
    server.now = stored.index[50] + pd.Timedelta(minutes=30)
    rows = get(server, "kline", category="linear", symbol=SYMBOL, interval="60", limit=1000)["result"]["list"]
    assert len(rows) == 51 and int(rows[0][0]) == ms(stored.index[50])
    o, h, low, c, v, t = map(float, rows[0][1:])
    final = stored.iloc[50]
    assert o == final["open"] and v == pytest.approx(final["volume"] / 2) and t == pytest.approx(final["turnover"] / 2)
    assert c == pytest.approx((final["open"] + final["close"]) / 2) and h == max(o, c) and low == min(o, c)
    assert [float(x) for x in rows[1][1:]] == stored.iloc[49].tolist()
    funding = get(server, "funding/history", category="linear", symbol=SYMBOL)["result"]["list"]
    assert max(int(r["fundingRateTimestamp"]) for r in funding) <= ms(server.now)


def test_funding_history_rules(server: ReplayServer, market_store: Store) -> None:
    stored = market_store.read_funding(SYMBOL)
    rows = get(server, "funding/history", category="linear", symbol=SYMBOL)["result"]["list"]
    assert len(rows) == 200 and set(rows[0]) == {"symbol", "fundingRate", "fundingRateTimestamp"}
    assert int(rows[0]["fundingRateTimestamp"]) == ms(stored.index[-1])  # newest first
    only_start = get(server, "funding/history", category="linear", symbol=SYMBOL, startTime=ms(T0))
    assert only_start["retCode"] == 10001  # Bybit: passing only startTime is an error
    spot = get(server, "funding/history", category="spot", symbol=SYMBOL)
    assert spot["retCode"] == 10001


def test_open_interest_cursor_pages(server: ReplayServer) -> None:
    params = {"category": "linear", "symbol": SYMBOL, "intervalTime": "1h", "limit": 200}
    first = get(server, "open-interest", **params)["result"]
    assert len(first["list"]) == 200 and first["nextPageCursor"]
    second = get(server, "open-interest", **params, cursor=first["nextPageCursor"])["result"]
    third = get(server, "open-interest", **params, cursor=second["nextPageCursor"])["result"]
    assert len(second["list"]) == 200 and len(third["list"]) == 50 and third["nextPageCursor"] == ""
    stamps = [int(r["timestamp"]) for page in (first, second, third) for r in page["list"]]
    assert stamps == sorted(stamps, reverse=True) and len(set(stamps)) == 450
    assert get(server, "open-interest", **params | {"intervalTime": "2h"})["retCode"] == 10001


def test_orderbook_limits_and_synthetic_label(server: ReplayServer) -> None:
    default = get(server, "orderbook", category="linear", symbol=SYMBOL)["result"]
    assert len(default["b"]) == len(default["a"]) == 25 and default["synthetic"] is True
    assert get(server, "orderbook", category="linear", symbol=SYMBOL, limit=501)["retCode"] == 10001
    assert len(get(server, "orderbook", category="linear", symbol=SYMBOL, limit=500)["result"]["a"]) == 500
    spot = get(server, "orderbook", category="spot", symbol=SYMBOL)  # the store holds AAAUSDT as linear only
    assert spot["retCode"] == 10001 and spot["retMsg"] == "Not supported symbols"


def test_synthetic_spread_is_whole_ticks_scaled_by_the_last_days_volatility(
    server: ReplayServer, market_store: Store
) -> None:
    stored = market_store.read(SYMBOL, "60")
    widths = set()
    for i in (30, 400, 900, 1700, 2400):
        server.now = stored.index[i] + pd.Timedelta(minutes=30)
        bar = stored.iloc[i]
        price = bar["open"] + (bar["close"] - bar["open"]) / 2  # the open bar, half way
        closes = [*stored["close"].iloc[i - 24 : i], price]  # a day of closes up to the last price
        vol = float(np.sqrt(np.sum(np.diff(np.log(closes)) ** 2)))
        tick = tick_size(price)
        expected = max(1, math.ceil(price * SPREAD_PER_DAILY_VOL * vol / tick - 1e-9))
        book = get(server, "orderbook", category="linear", symbol=SYMBOL)["result"]
        bid, ask = float(book["b"][0][0]), float(book["a"][0][0])
        assert round((ask - bid) / tick) == expected and bid <= price <= ask and book["synthetic"] is True
        assert round((float(book["a"][1][0]) - ask) / tick) == 1  # deeper levels one tick apart
        ticker = get(server, "tickers", category="linear", symbol=SYMBOL)["result"]["list"][0]
        assert (ticker["bid1Price"], ticker["ask1Price"]) == (book["b"][0][0], book["a"][0][0])
        widths.add(expected)
    assert len(widths) > 1  # the spread follows volatility, it is not a constant


def test_option_category_answers_an_empty_list_like_bybit(server: ReplayServer) -> None:
    for path in ("instruments-info", "tickers"):
        body = get(server, path, category="option", baseCoin="BTC")
        assert body["retCode"] == 0 and body["result"] == {"category": "option", "list": []} | (
            {"nextPageCursor": ""} if path == "instruments-info" else {}
        )
    assert get(server, "instruments-info", category="linear", status="PreLaunch")["result"]["list"] == []


def test_instruments_cursor_and_derived_rules(server: ReplayServer) -> None:
    first = get(server, "instruments-info", category="linear", limit=1)["result"]
    second = get(server, "instruments-info", category="linear", limit=1, cursor=first["nextPageCursor"])["result"]
    assert [r["symbol"] for r in first["list"] + second["list"]] == ["AAAUSDT", "BBBUSDT"]
    assert second["nextPageCursor"] == ""
    assert get(server, "instruments-info", category="inverse")["result"]["list"] == []
    assert tick_size(30_000) == pytest.approx(0.1) and tick_size(2_000) == pytest.approx(0.01)
    assert qty_step(30_000) == pytest.approx(1e-4) and qty_step(0.5) == pytest.approx(10)


def test_fault_schedule_and_rate_limit_header(server: ReplayServer) -> None:
    server.faults = Faults(schedule=["rate_limit", "http_500", "truncate", "corrupt", "ok"], reset_ms=5000)
    limited = httpx.get(f"{server.url}/v5/market/time")
    assert limited.json()["retCode"] == 10006 and limited.json()["retMsg"] == "Too many visits!"
    reset = int(limited.headers["X-Bapi-Limit-Reset-Timestamp"])
    assert reset >= limited.json()["time"] + 4000  # wall clock + reset_ms
    assert httpx.get(f"{server.url}/v5/market/time").status_code == 500
    with pytest.raises(json.JSONDecodeError):
        json.loads(httpx.get(f"{server.url}/v5/market/time").content)
    assert httpx.get(f"{server.url}/v5/market/time").json()["result"] is None
    assert httpx.get(f"{server.url}/v5/market/time").json()["retCode"] == 0
    assert [r.fault for r in server.requests] == ["rate_limit", "http_500", "truncate", "corrupt", "ok"]


def test_server_stops_and_frees_its_port(market_store: Store) -> None:
    server = ReplayServer(market_store).start()
    url = server.url
    assert httpx.get(f"{url}/v5/market/time").status_code == 200
    server.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/v5/market/time")
    again = ReplayServer(market_store, port=server.port).start()  # the port is reusable at once
    again.stop()


def test_sync_through_replay_never_stores_the_open_bar(server: ReplayServer, market_store: Store, tmp_path) -> None:
    stored = market_store.read(SYMBOL, "60")
    server.now = stored.index[1500] + pd.Timedelta(minutes=40)
    target = Store(str(tmp_path / "synced"))
    with BybitClient(server.url, rate_limiter=None, backoff_base_s=0.01) as client:
        target.sync(client, "linear", [SYMBOL], "60", stored.index[0], funding=False)
        first = target.read(SYMBOL, "60")
        pd.testing.assert_frame_equal(first, stored.iloc[:1500])  # bar 1500 was open: not stored
        server.now = stored.index[-1] + pd.Timedelta(hours=1)
        server.faults = Faults(rate_limit_every_n=2, http_500_every_n=3, truncate_every_n=5, reset_ms=1)
        target.sync(client, "linear", [SYMBOL], "60", stored.index[0], funding=False)
    pd.testing.assert_frame_equal(target.read(SYMBOL, "60"), stored)
    assert any(r.fault != "ok" for r in server.requests)


def test_imported_bars_without_turnover_replay_with_an_estimate(tmp_path) -> None:
    """Exchange dumps (Binance OHLCV) have no quote turnover; they must still replay and sync."""
    import pandas as pd

    from fmtrade.data.bybit import BybitClient
    from fmtrade.data.replay import ReplayServer
    from fmtrade.data.store import Store

    index = pd.date_range("2023-01-01", periods=30, freq="h", tz="UTC", name="timestamp")
    bars = pd.DataFrame(
        {"open": 10.0, "high": 12.0, "low": 9.0, "close": 11.0, "volume": 3.0, "turnover": float("nan")}, index=index
    )
    store = Store(str(tmp_path / "src"))
    store.write_bars("spot", "BTCUSDT", "60", bars)
    with ReplayServer(store) as server, BybitClient(server.url) as client:
        got = client.klines("spot", "BTCUSDT", "60", index[0], index[-1])
    assert len(got) == 30
    assert got["turnover"].tolist() == [3.0 * (12.0 + 9.0 + 11.0) / 3] * 30
