"""Users' own Bybit tools against the replay server, unchanged: Bybit's official SDK (pybit) and ccxt (the
client freqtrade uses), public market data and the signed account, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import pandas as pd
import pytest

from fmtrade.data.replay import ReplayServer
from fmtrade.data.store import Store

KEY, SECRET = "sdk-key", "sdk-secret"
SYMBOL = "AAAUSDT"


@pytest.fixture(scope="module")
def replay(market_store: Store):
    now = market_store.read(SYMBOL, "60").index[1000] + pd.Timedelta(minutes=20)
    with ReplayServer(market_store, now=now, accounts={KEY: SECRET}, initial_balance=50_000.0) as server:
        yield server


def test_pybit_reads_the_market_and_trades_the_simulated_account(replay: ReplayServer) -> None:
    unified_trading = pytest.importorskip("pybit.unified_trading")
    session = unified_trading.HTTP(testnet=False, api_key=KEY, api_secret=SECRET)
    session.endpoint = replay.url  # pybit builds every URL as endpoint + path
    klines = session.get_kline(category="linear", symbol=SYMBOL, interval="60", limit=5)["result"]["list"]
    stamps = [int(row[0]) for row in klines]
    assert len(klines) == 5 and stamps == sorted(stamps, reverse=True)
    assert stamps[0] <= replay.clock().value // 1_000_000 < stamps[0] + 3_600_000  # the open bar, no later
    ticker = session.get_tickers(category="linear", symbol=SYMBOL)["result"]["list"][0]
    book = session.get_orderbook(category="linear", symbol=SYMBOL)["result"]
    assert (ticker["bid1Price"], ticker["ask1Price"]) == (book["b"][0][0], book["a"][0][0])
    rules = session.get_instruments_info(category="linear", symbol=SYMBOL)["result"]["list"][0]
    assert rules["lotSizeFilter"]["minNotionalValue"] == "5"
    assert session.get_funding_rate_history(category="linear", symbol=SYMBOL, limit=3)["result"]["list"]
    placed = session.place_order(
        category="linear", symbol=SYMBOL, side="Buy", orderType="Market", qty="2", orderLinkId="pybit-1"
    )
    assert placed["retCode"] == 0
    orders = session.get_open_orders(category="linear", symbol=SYMBOL, orderLinkId="pybit-1")["result"]["list"]
    assert orders[0]["orderStatus"] == "Filled" and orders[0]["avgPrice"] == book["a"][0][0]
    position = session.get_positions(category="linear", symbol=SYMBOL)["result"]["list"][0]
    assert position["side"] == "Buy" and float(position["size"]) >= 2
    wallet = session.get_wallet_balance(accountType="UNIFIED")["result"]["list"][0]
    assert float(wallet["totalEquity"]) < 50_000  # the taker fee and half the spread were paid


def test_ccxt_loads_markets_reads_data_and_trades(replay: ReplayServer) -> None:
    ccxt = pytest.importorskip("ccxt")
    exchange = ccxt.bybit({"apiKey": KEY, "secret": SECRET, "enableRateLimit": False})
    exchange.urls["api"] = {name: replay.url for name in exchange.urls["api"]}
    markets = exchange.load_markets()  # asks every category, option included, and the coin list (signed)
    assert {"AAA/USDT:USDT", "BBB/USDT:USDT"} <= set(markets)
    perp = "AAA/USDT:USDT"
    candles = exchange.fetch_ohlcv(perp, "1h", limit=10)
    assert len(candles) == 10 and candles == sorted(candles)
    book = exchange.fetch_order_book(perp)
    ticker = exchange.fetch_ticker(perp)
    assert book["bids"][0][0] == ticker["bid"] < ticker["ask"] == book["asks"][0][0]
    before = exchange.fetch_balance()["total"]["USDT"]
    created = exchange.create_order(perp, "market", "sell", 3)
    assert created["id"]
    positions = [p for p in exchange.fetch_positions([perp]) if p["contracts"]]
    assert positions and positions[0]["symbol"] == perp
    assert exchange.fetch_balance()["total"]["USDT"] < before  # the fee came out of the wallet
    paths = {r.path for r in replay.requests}
    assert {"/v5/user/query-api", "/v5/account/info", "/v5/order/create", "/v5/position/list"} <= paths
