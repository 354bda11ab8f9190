"""Bybit v5 private API, both sides: the signer, the replay server's simulated account, and the BybitBroker
against it over real HTTP on 127.0.0.1 (faults injected on the order path)."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from urllib.parse import urlencode

import httpx
import numpy as np
import pandas as pd
import pytest

from fmtrade.agent.broker import OrderIntent, order_link_id
from fmtrade.agent.bybit import (
    AuthError,
    BybitBroker,
    ClockSkewError,
    InsufficientBalanceError,
    QuantityError,
    error_for,
)
from fmtrade.config import BYBIT_MAINNET, BYBIT_TESTNET, load_settings
from fmtrade.data.bybit import BybitError
from fmtrade.data.bybit_auth import auth_headers, sign
from fmtrade.data.replay import Faults, ReplayServer
from fmtrade.data.store import Store
from fmtrade.data.synthetic import SyntheticSpec, synthesize
from fmtrade.errors import InputError

KEY, SECRET = "fake-key-7Qz", "fake-secret-Xw9PbYt2"
SYMBOL = "AAAUSDT"
FEE = 7.5e-4  # backtest.taker_fee_bps default


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    store = Store(str(tmp_path_factory.mktemp("private-store")))
    market = synthesize([SYMBOL, "BBBUSDT"], SyntheticSpec(hours=200, start="2022-01-01", seed=3))
    for symbol, bars in market.bars.items():
        store.write_bars("linear", symbol, "60", bars)
        store.write_funding("linear", symbol, market.funding[symbol])
        store.write_bars("spot", symbol, "60", bars)
    return store


NOW = pd.Timestamp("2022-01-08T12:30:00Z")


@pytest.fixture
def server(store: Store):
    with ReplayServer(store, now=NOW, accounts={KEY: SECRET}, initial_balance=10_000.0) as srv:
        yield srv


def signed(server: ReplayServer, method: str, path: str, params: dict, *, key: str = KEY, secret: str = SECRET,
           timestamp_ms: int | None = None) -> dict:  # fmt: skip
    """A request signed by the test's own HMAC code (not fmtrade's), as a user's client would send it."""
    ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    payload = urlencode(params) if method == "GET" else json.dumps(params)
    signature = hmac.new(secret.encode(), f"{ts}{key}5000{payload}".encode(), hashlib.sha256).hexdigest()
    headers = {"X-BAPI-API-KEY": key, "X-BAPI-TIMESTAMP": str(ts), "X-BAPI-SIGN": signature,
               "X-BAPI-RECV-WINDOW": "5000", "Content-Type": "application/json"}  # fmt: skip
    if method == "GET":
        response = httpx.get(f"{server.url}{path}?{payload}", headers=headers)
    else:
        response = httpx.post(f"{server.url}{path}", content=payload, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def order(server: ReplayServer, side: str, qty: str, category: str = "linear", symbol: str = SYMBOL, **extra) -> dict:
    params = {"category": category, "symbol": symbol, "side": side, "orderType": "Market", "qty": qty} | extra
    return signed(server, "POST", "/v5/order/create", params)


def book(server: ReplayServer, category: str = "linear", symbol: str = SYMBOL) -> tuple[float, float]:
    result = httpx.get(f"{server.url}/v5/market/orderbook", params={"category": category, "symbol": symbol}).json()
    return float(result["result"]["b"][0][0]), float(result["result"]["a"][0][0])


def test_signer_matches_independent_vectors() -> None:
    ts, window = 1658384314791, 5000
    query = "category=option&symbol=BTC-29JUL22-25000-C"
    body = '{"category":"linear","symbol":"BTCUSDT","side":"Buy","orderType":"Market","qty":"0.001"}'
    for payload in (query, body):
        message = f"{ts}{KEY}{window}{payload}".encode()
        expected = hmac.new(SECRET.encode(), message, hashlib.sha256).hexdigest()
        assert sign(SECRET, ts, KEY, window, payload) == expected
        headers = auth_headers(KEY, SECRET, payload, window, timestamp_ms=ts)
        assert headers == {
            "X-BAPI-API-KEY": KEY, "X-BAPI-TIMESTAMP": str(ts), "X-BAPI-SIGN": expected,
            "X-BAPI-RECV-WINDOW": "5000", "X-BAPI-SIGN-TYPE": "2",
        }  # fmt: skip
    pybit = pytest.importorskip("pybit._http_manager")
    assert sign(SECRET, ts, KEY, window, query) == pybit.generate_signature(False, SECRET, f"{ts}{KEY}{window}{query}")


def test_signatures_keys_and_clock_are_checked_against_the_wall_clock(server: ReplayServer) -> None:
    params = {"accountType": "UNIFIED"}
    path = "/v5/account/wallet-balance"
    assert signed(server, "GET", path, params)["retCode"] == 0  # replay clock in 2022, wall clock decides
    assert signed(server, "GET", path, params, key="other")["retCode"] == 10003
    assert signed(server, "GET", path, params, secret="wrong")["retCode"] == 10004
    wall = int(time.time() * 1000)
    assert signed(server, "GET", path, params, timestamp_ms=wall - 60_000)["retCode"] == 10002
    assert signed(server, "GET", path, params, timestamp_ms=wall + 5_000)["retCode"] == 10002
    assert signed(server, "GET", path, params, timestamp_ms=NOW.value // 1_000_000)["retCode"] == 10002
    unsigned = httpx.get(f"{server.url}{path}", params=params).json()
    assert unsigned["retCode"] == 10003
    assert httpx.get(f"{server.url}/v5/order/nonexistent").status_code == 404


def test_market_orders_fill_at_the_book_edge_with_the_taker_fee(server: ReplayServer) -> None:
    bid, ask = book(server)
    assert order(server, "Buy", "10", orderLinkId="a-1")["retCode"] == 0
    row = signed(server, "GET", "/v5/order/realtime", {"category": "linear", "orderLinkId": "a-1"})["result"]["list"][0]
    assert row["orderStatus"] == "Filled" and float(row["avgPrice"]) == ask and float(row["cumExecQty"]) == 10
    assert float(row["cumExecFee"]) == pytest.approx(10 * ask * FEE)
    position = signed(server, "GET", "/v5/position/list", {"category": "linear"})["result"]["list"]
    last = float(httpx.get(f"{server.url}/v5/market/tickers", params={"category": "linear", "symbol": SYMBOL})
                 .json()["result"]["list"][0]["lastPrice"])  # fmt: skip
    assert len(position) == 1 and position[0]["side"] == "Buy" and float(position[0]["size"]) == 10
    assert float(position[0]["markPrice"]) == pytest.approx(last)
    assert float(position[0]["unrealisedPnl"]) == pytest.approx(10 * (last - ask))
    # Sell 15: closes the long at the bid (realising 10 x (bid - ask)) and opens a 5 short at the bid.
    assert order(server, "Sell", "15")["retCode"] == 0
    short = signed(server, "GET", "/v5/position/list", {"category": "linear", "symbol": SYMBOL})["result"]["list"][0]
    assert short["side"] == "Sell" and float(short["size"]) == 5 and float(short["avgPrice"]) == bid
    wallet = signed(server, "GET", "/v5/account/wallet-balance", {"accountType": "UNIFIED"})["result"]["list"][0]
    fees = 10 * ask * FEE + 15 * bid * FEE
    expected_wallet = 10_000 - fees + 10 * (bid - ask)
    assert float(wallet["totalWalletBalance"]) == pytest.approx(expected_wallet)
    assert float(wallet["totalEquity"]) == pytest.approx(expected_wallet - 5 * (last - bid))


def test_order_rules_answer_bybits_ret_codes(server: ReplayServer) -> None:
    info = httpx.get(f"{server.url}/v5/market/instruments-info", params={"category": "linear", "symbol": SYMBOL})
    lot = info.json()["result"]["list"][0]["lotSizeFilter"]
    step = float(lot["qtyStep"])
    assert order(server, "Buy", "10", orderLinkId="dup")["retCode"] == 0
    assert order(server, "Buy", "10", orderLinkId="dup")["retCode"] == 110072  # never a second order
    assert order(server, "Buy", str(step / 2))["retCode"] == 110017
    assert order(server, "Buy", str(step * 1.5))["retCode"] == 110017
    assert order(server, "Buy", "100000")["retCode"] == 110007  # 10x leverage on 10 000 USDT
    assert order(server, "Sell", "20", reduceOnly=True)["retCode"] == 110017  # more than the position
    assert order(server, "Buy", "1", orderType="Limit")["retCode"] == 10001
    assert order(server, "Buy", "1", category="inverse")["retCode"] == 10001
    # Spot: the coins move; selling what is not held, too many decimals, too little.
    spot_lot = httpx.get(f"{server.url}/v5/market/instruments-info", params={"category": "spot", "symbol": SYMBOL})
    precision = float(spot_lot.json()["result"]["list"][0]["lotSizeFilter"]["basePrecision"])
    assert order(server, "Sell", "1", category="spot")["retCode"] == 170131
    assert order(server, "Buy", str(precision * 1.5), category="spot", marketUnit="baseCoin")["retCode"] == 170137
    assert order(server, "Buy", str(precision / 2), category="spot", marketUnit="baseCoin")["retCode"] == 170136
    _, ask = book(server, "spot")
    assert order(server, "Buy", "2", category="spot", marketUnit="baseCoin")["retCode"] == 0
    coins = signed(server, "GET", "/v5/account/wallet-balance", {"accountType": "UNIFIED", "coin": "AAA"})
    assert float(coins["result"]["list"][0]["coin"][0]["walletBalance"]) == 2


def test_replay_clock_runs_faster_than_the_wall_clock(store: Store) -> None:
    with ReplayServer(store, now=NOW, speed=3600) as fast:
        first = int(httpx.get(f"{fast.url}/v5/market/time").json()["result"]["timeNano"])
        time.sleep(0.5)
        second = int(httpx.get(f"{fast.url}/v5/market/time").json()["result"]["timeNano"])
        advanced_h = (second - first) / 3.6e12
        assert 0.45 <= advanced_h <= 10.0, advanced_h  # 0.5 s x 3600 = half an hour, plus request time
        assert fast.clock() > NOW
        fast.speed = 0  # frozen where it stands
        frozen = fast.clock()
        time.sleep(0.05)
        assert fast.clock() == frozen
    with pytest.raises(InputError, match="speed"):
        ReplayServer(store, speed=-1)


# The broker ---------------------------------------------------------------------------------
def settings_with_keys(monkeypatch: pytest.MonkeyPatch, **agent):
    monkeypatch.setenv("FMTRADE_AGENT__API_KEY", KEY)
    monkeypatch.setenv("FMTRADE_AGENT__API_SECRET", SECRET)
    return load_settings(overrides={"agent": agent} if agent else None)


def intent(qty: float = 10.0, side: str = "Buy", cycle: int = 1) -> OrderIntent:
    return OrderIntent(
        symbol=SYMBOL, category="linear", side=side, qty=qty, order_link_id=order_link_id("r", cycle, SYMBOL)
    )


def test_broker_places_looks_up_and_reports_the_account(server: ReplayServer, monkeypatch) -> None:
    with BybitBroker(settings_with_keys(monkeypatch), base_url=server.url) as broker:
        state = broker.place(intent())
        assert state.status == "Filled" and state.filled_qty == 10 and state.avg_price == book(server)[1]
        assert state.fee == pytest.approx(10 * state.avg_price * FEE)
        again = broker.place(intent())  # the same orderLinkId: answered from the exchange, not placed twice
        assert again.order_id == state.order_id
        assert broker.lookup(intent().order_link_id, SYMBOL) == state
        assert broker.lookup("fmt-unknown", SYMBOL) is None
        account = broker.account()
        position = account.positions[SYMBOL]
        assert position.qty == 10 and position.avg_price == state.avg_price
        assert account.equity == pytest.approx(account.cash + position.qty * position.mark_price)
        assert account.equity == pytest.approx(10_000 - state.fee + 10 * (position.mark_price - state.avg_price))
        rules = {i.symbol: i for i in broker.instruments()}
        assert rules[SYMBOL].qty_step > 0 and rules[SYMBOL].min_notional == 5
    creates = [r.ret_code for r in server.requests if r.path == "/v5/order/create"]
    assert creates == [0, 110072]


def test_a_timeout_on_order_create_ends_with_exactly_one_order(server: ReplayServer, monkeypatch) -> None:
    server.faults = Faults(schedule=["delay"], delay_s=2.5, paths=["/v5/order/create"])
    with BybitBroker(settings_with_keys(monkeypatch), base_url=server.url, timeout_s=1.0) as broker:
        state = broker.place(intent(qty=3))
    assert state.status == "Filled" and state.filled_qty == 3
    creates = [(r.fault, r.ret_code) for r in server.requests if r.path == "/v5/order/create"]
    assert creates == [("delay", 0), ("ok", 110072)]  # placed by the first, refused as a duplicate second
    everything = signed(server, "GET", "/v5/order/realtime", {"category": "linear"})["result"]["list"]
    assert [o["orderLinkId"] for o in everything] == [intent().order_link_id]


def test_private_paths_are_faulted_only_when_named(server: ReplayServer, monkeypatch) -> None:
    server.faults = Faults(schedule=["http_500", "http_500"])  # paths=None: market paths only
    with BybitBroker(settings_with_keys(monkeypatch), base_url=server.url) as broker:
        assert broker.account().equity == pytest.approx(10_000)
    assert all(r.fault == "ok" for r in server.requests)


def test_ret_codes_become_typed_errors(server: ReplayServer, monkeypatch) -> None:
    with BybitBroker(settings_with_keys(monkeypatch), base_url=server.url) as broker:
        with pytest.raises(QuantityError) as qty_error:
            broker.place(intent(qty=1e-9))
        assert qty_error.value.ret_code == 110017
        with pytest.raises(InsufficientBalanceError):
            broker.place(intent(qty=100_000, cycle=2))
    monkeypatch.setenv("FMTRADE_AGENT__API_SECRET", "not-the-secret")
    with BybitBroker(load_settings(), base_url=server.url) as broker, pytest.raises(AuthError) as auth:
        broker.account()
    assert auth.value.ret_code == 10004
    for code, kind in [(10002, ClockSkewError), (10003, AuthError), (110004, InsufficientBalanceError),
                       (170136, QuantityError), (170137, QuantityError), (10001, BybitError)]:  # fmt: skip
        error = error_for(code, "msg", "/v5/order/create")
        assert type(error) is kind and isinstance(error, BybitError) and error.ret_code == code


def test_testnet_by_default_mainnet_only_when_live_and_confirmed(monkeypatch) -> None:
    settings = settings_with_keys(monkeypatch)
    assert BybitBroker(settings).base_url == BYBIT_TESTNET
    with pytest.raises(InputError) as refused:
        BybitBroker(settings, live=True)
    assert refused.value.field == "agent.confirm_live"
    assert BybitBroker(settings_with_keys(monkeypatch, confirm_live=True), live=True).base_url == BYBIT_MAINNET
    with pytest.raises(InputError) as not_testnet:
        BybitBroker(settings_with_keys(monkeypatch, testnet=False))
    assert not_testnet.value.field == "agent.testnet"
    monkeypatch.delenv("FMTRADE_AGENT__API_SECRET")
    with pytest.raises(InputError) as missing:
        BybitBroker(load_settings())
    assert missing.value.field == "agent.api_secret" and "FMTRADE_AGENT__API_SECRET" in str(missing.value)


def test_no_key_or_secret_in_logs_errors_or_request_records(
    server: ReplayServer, monkeypatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server.faults = Faults(schedule=["http_500", "delay"], delay_s=1.0, paths=["/v5/order/create"])
    texts: list[str] = []
    with BybitBroker(settings_with_keys(monkeypatch), base_url=server.url, timeout_s=0.3) as broker:
        texts.append(repr(broker))
        texts.append(repr(broker.place(intent(qty=2))))
        for bad in (intent(qty=1e-9, cycle=5), intent(qty=1e9, cycle=6)):
            with pytest.raises(BybitError) as info:
                broker.place(bad)
            texts += [str(info.value), repr(info.value), repr(info.value.params)]
    monkeypatch.setenv("FMTRADE_AGENT__API_SECRET", "wrong-" + SECRET)
    with BybitBroker(load_settings(), base_url=server.url) as broker, pytest.raises(AuthError) as auth:
        broker.account()
    texts += [str(auth.value), repr(auth.value)]
    texts += [caplog.text, repr([(r.path, r.params) for r in server.requests])]
    assert any("retrying" in t for t in texts)  # the retries were logged, so the scan saw real log lines
    for text in texts:
        assert KEY not in text and SECRET not in text


def test_flat_markets_still_quote_one_tick(tmp_path) -> None:
    index = pd.date_range("2023-01-01", periods=48, freq="h", tz="UTC", name="timestamp")
    flat = pd.DataFrame({"open": 100.0, "high": 100.0, "low": 100.0, "close": 100.0, "volume": 5.0,
                         "turnover": 500.0}, index=index)  # fmt: skip
    store = Store(str(tmp_path / "flat"))
    store.write_bars("linear", "FLATUSDT", "60", flat)
    with ReplayServer(store, now=index[-1], accounts={KEY: SECRET}) as srv:
        bid, ask = book(srv, symbol="FLATUSDT")
        assert np.isclose(ask - bid, 0.001) and bid <= 100.0 <= ask  # tick 0.001 at 100
        assert order(srv, "Buy", "1", symbol="FLATUSDT")["retCode"] == 0


@pytest.mark.slow
def test_replay_command_serves_a_fast_clock_and_the_private_account(store: Store, port: int, monkeypatch) -> None:
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    env = os.environ | {"PYTHONPATH": str(REPO), "FMTRADE_AGENT__API_KEY": KEY, "FMTRADE_AGENT__API_SECRET": SECRET}
    argv = ["data", "replay", "--port", str(port), "--store", str(store.root), "--now", "2022-01-05T00:00:00Z"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "fmtrade", *argv, "--speed", "3600", "--private", "--balance", "2000"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                first = int(httpx.get(f"{url}/v5/market/time").json()["result"]["timeSecond"])
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert first >= pd.Timestamp("2022-01-05", tz="UTC").timestamp()
        with BybitBroker(settings_with_keys(monkeypatch), base_url=url) as broker:
            assert broker.account().equity == pytest.approx(2000)
            assert broker.place(intent(qty=1)).status == "Filled"
        time.sleep(1.0)
        later = int(httpx.get(f"{url}/v5/market/time").json()["result"]["timeSecond"])
        assert later - first >= 3000  # at least 3000 replay seconds in a bit over one wall second
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    assert KEY not in stderr and SECRET not in stderr
