"""Observations: through the real replay server and BybitClient, from the store, only from data known
at the decision time; indicators against a hand computation; the event feed's time filter; the
forecast summary against the Forecast helpers."""

from __future__ import annotations

import json
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd
import pytest

from fmtrade.agent.broker import Account, Position
from fmtrade.agent.events import EventFeed
from fmtrade.agent.indicators import compute_indicators
from fmtrade.agent.observe import (
    InProcessForecasts,
    closed_bars,
    gather_live,
    gather_store,
    make_forecasts,
    observe,
    summarise_forecast,
)
from fmtrade.agent.schemas import Event
from fmtrade.config import load_settings
from fmtrade.data.bybit import BybitClient
from fmtrade.errors import InputError
from fmtrade.forecasting import forecast_symbol
from fmtrade.models.base import Forecast
from fmtrade.models.baselines import NaiveForecaster, RandomWalkForecaster

HOUR = pd.Timedelta(hours=1)
AT = pd.Timestamp("2022-01-15 10:30", tz="UTC")  # inside the 10:00 bar; open interest is stored until ~01-19


def bars_frame(close: np.ndarray, volume: np.ndarray | None = None, start: str = "2024-01-01") -> pd.DataFrame:
    index = pd.date_range(start, periods=len(close), freq="h", tz="UTC")
    volume = np.ones(len(close)) if volume is None else volume
    return pd.DataFrame(
        {"open": close, "high": close, "low": close, "close": close, "volume": volume, "turnover": close * volume},
        index=index,
    )


# Indicators ----------------------------------------------------------------------------------------
def hand_rsi(close: np.ndarray, window: int = 14) -> float:
    """Wilder's RSI written out: smoothed gains over smoothed losses, alpha = 1/window, from zero."""
    alpha = 1.0 / window
    gain = loss = 0.0
    for change in np.diff(close, prepend=close[0]):
        gain = (1 - alpha) * gain + alpha * max(change, 0.0)
        loss = (1 - alpha) * loss + alpha * max(-change, 0.0)
    return 100.0 - 100.0 / (1.0 + gain / loss)


def test_indicators_match_a_hand_computation() -> None:
    rng = np.random.default_rng(3)
    close = 100 * np.exp(np.cumsum(rng.normal(0.001, 0.01, 80)))
    volume = rng.uniform(10, 20, 80)
    volume[-1] = 40.0
    ind = compute_indicators(bars_frame(close, volume), "60")
    assert ind.rsi_14 == pytest.approx(hand_rsi(close), rel=1e-9)
    assert ind.sma_20 == pytest.approx(close[-20:].mean())
    assert ind.sma_50 == pytest.approx(close[-50:].mean())
    expected_trend = "up" if close[-20:].mean() / close[-50:].mean() - 1 > 0.001 else "down"
    assert ind.trend == expected_trend
    log_returns = np.diff(np.log(close[-25:]))
    assert ind.volatility_24h == pytest.approx(np.std(log_returns, ddof=1))
    assert ind.return_1h == pytest.approx(close[-1] / close[-2] - 1)
    assert ind.return_24h == pytest.approx(close[-1] / close[-25] - 1)
    window = volume[-50:]
    assert ind.volume_z == pytest.approx((40.0 - window.mean()) / np.std(window, ddof=1))


def test_indicators_are_none_where_the_history_is_too_short() -> None:
    short = compute_indicators(bars_frame(np.linspace(100, 110, 10)), "60")
    assert short.rsi_14 is None and short.sma_20 is None and short.sma_50 is None and short.trend is None
    assert short.volatility_24h is None and short.return_24h is None and short.volume_z is None
    assert short.return_1h == pytest.approx(110 / (110 - 10 / 9) - 1)
    daily = compute_indicators(bars_frame(np.linspace(100, 200, 60)), "D")  # 1 h is not a whole daily bar
    assert daily.return_1h is None and daily.return_24h == pytest.approx(200 / (200 - 100 / 59) - 1)
    rising = compute_indicators(bars_frame(np.linspace(100, 200, 60)), "60")
    assert rising.rsi_14 == 100.0 and rising.trend == "up"


# Observe ---------------------------------------------------------------------------------------------
def test_observation_through_the_replay_server_uses_only_closed_bars(server, market_store) -> None:
    server.now = AT
    with BybitClient(server.url, rate_limiter=None) as client:
        raw = client.klines("linear", "AAAUSDT", "60", AT - 5 * HOUR, AT)
        data = gather_live(client, "AAAUSDT", "linear", "60", lookback=200)
    assert raw.index[-1] == pd.Timestamp("2022-01-15 10:00", tz="UTC")  # the server sends the open bar...
    assert data.at == AT
    obs = data.observe()
    stored = market_store.read("AAAUSDT", "60", AT - 300 * HOUR, AT - HOUR, "linear")  # ...which is dropped
    assert stored.index[-1] == pd.Timestamp("2022-01-15 09:00", tz="UTC")
    assert obs.symbol == "AAAUSDT" and obs.category == "linear" and obs.time == AT.to_pydatetime()
    assert obs.last_price == pytest.approx(stored["close"].iloc[-1])
    assert obs.indicators == compute_indicators(stored.iloc[-200:], "60")
    assert obs.book is not None and obs.book.synthetic and obs.book.spread_bps > 0
    assert -1 <= obs.book.imbalance <= 1
    funding = market_store.read_funding("AAAUSDT", "linear", None, AT)
    oi = market_store.read_open_interest("AAAUSDT", "1h", "linear", None, AT)["open_interest"]
    assert obs.derivatives is not None
    assert obs.derivatives.funding_rate == pytest.approx(funding["funding_rate"].iloc[-1])
    assert obs.derivatives.open_interest_change_24h == pytest.approx(oi.iloc[-1] / oi.loc[oi.index[-1] - 24 * HOUR] - 1)
    # The store gathers the same inputs (it has no book).
    from_store = gather_store(market_store, "AAAUSDT", "linear", "60", AT, lookback=200).observe()
    assert from_store.model_dump(exclude={"book"}) == obs.model_dump(exclude={"book"})
    assert from_store.book is None


def test_observation_at_a_past_time_leaves_the_current_book_out(server) -> None:
    server.now = AT
    with BybitClient(server.url, rate_limiter=None) as client:
        data = gather_live(client, "BBBUSDT", "linear", "60", lookback=100, at=AT - 3 * HOUR)
    obs = data.observe()
    assert obs.book is None  # the snapshot is from after the decision time
    assert data.bars.index[-1] == AT - 3.5 * HOUR  # bars end at the decision time


def test_observation_does_not_change_when_the_future_does(market_store) -> None:
    at = pd.Timestamp("2022-02-10 12:00", tz="UTC")
    bars = market_store.read("AAAUSDT", "60", at - 300 * HOUR, at + 48 * HOUR, "linear")
    funding = market_store.read_funding("AAAUSDT", "linear", at - 72 * HOUR, at + 48 * HOUR)
    account = Account(
        equity=100_000.0,
        cash=90_000.0,
        positions={"AAAUSDT": Position(symbol="AAAUSDT", qty=-2, avg_price=5, mark_price=5)},
    )
    events = [
        Event(time=at - HOUR, text="listing announced", symbols=["AAAUSDT"]),
        Event(time=at, text="published at the decision time: too late"),
        Event(time=at - 2 * HOUR, text="other coin news", symbols=["BBBUSDT"]),
    ]
    base = observe("AAAUSDT", bars=bars, at=at, category="linear", funding=funding, account=account, events=events)
    assert [e.text for e in base.events] == ["listing announced"]
    assert base.portfolio is not None and base.portfolio.position_notional == -10.0
    assert base.portfolio.gross_exposure == pytest.approx(10 / 100_000)

    future = bars.index + HOUR > at  # the bar opening at 'at' - 1 h closed at 'at': it is known
    perturbed = bars.copy()
    perturbed.loc[future, ["open", "high", "low", "close"]] *= 3.0
    perturbed.loc[future, "volume"] *= 50.0
    late_funding = funding.copy()
    late_funding.loc[late_funding.index > at, "funding_rate"] = 0.5
    again = observe(
        "AAAUSDT", bars=perturbed, at=at, category="linear", funding=late_funding, account=account, events=events
    )
    assert again == base
    # A change before 'at' does change it (the comparison above can fail).
    past = bars.copy()
    past.iloc[np.flatnonzero(~future)[-1], past.columns.get_loc("close")] *= 1.01
    assert observe("AAAUSDT", bars=past, at=at, category="linear").last_price != base.last_price
    assert len(closed_bars(bars, at, "60")) == int((~future).sum())


def test_observe_refuses_a_history_with_no_closed_bar() -> None:
    bars = bars_frame(np.array([1.0, 2.0]), start="2024-01-01 10:00")
    with pytest.raises(InputError, match="bars: no X bar of interval 60 closed in the .* bars before"):
        observe("X", bars=bars, at=pd.Timestamp("2024-01-01 10:59", tz="UTC"), category="linear")


# Events -------------------------------------------------------------------------------------------
FEED = [
    {"time": "2024-01-05T09:00:00Z", "text": "ETF approved", "source": "wire", "symbols": ["BTCUSDT"]},
    {"time": "2024-01-05T10:00:00+00:00", "text": "market-wide outage"},
    {"time": "2024-01-05T11:00:00Z", "text": "ETH upgrade", "symbols": ["ETHUSDT"]},
    {"time": "2024-01-05T12:00:00Z", "text": "exactly at the decision", "symbols": ["BTCUSDT"]},
    {"time": "2024-01-05T13:00:00", "text": "later (naive time is UTC)"},
]
AT_NOON = pd.Timestamp("2024-01-05 12:00", tz="UTC").to_pydatetime()


def test_event_feed_shows_only_earlier_events_for_the_symbol_or_the_market(tmp_path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in FEED) + "\n\n")
    feed = EventFeed.from_source(str(path))
    assert len(feed) == 5
    assert [e.text for e in feed.before(AT_NOON, "BTCUSDT")] == ["ETF approved", "market-wide outage"]
    assert [e.text for e in feed.before(AT_NOON, "ETHUSDT")] == ["market-wide outage", "ETH upgrade"]
    late = pd.Timestamp("2024-01-05 13:00:01", tz="UTC").to_pydatetime()
    assert feed.before(late, "SOLUSDT")[-1].text == "later (naive time is UTC)"


def test_event_feed_over_http(tmp_path) -> None:
    (tmp_path / "feed.jsonl").write_text("\n".join(json.dumps(e) for e in FEED))
    handler = partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        feed = EventFeed.from_source(f"{url}/feed.jsonl")
        assert [e.text for e in feed.before(AT_NOON, "BTCUSDT")] == ["ETF approved", "market-wide outage"]
        with pytest.raises(InputError, match="events: event feed .* answered HTTP 404"):
            EventFeed.from_source(f"{url}/missing.jsonl")
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"time": "2024-01-05T09:00:00Z", "text": "ok"', "not JSON"),
        ('{"text": "no time"}', "time: Field required"),
        ('{"time": "yesterday", "text": "x"}', "time: Input should be a valid datetime"),
        ('{"time": "2024-01-05T09:00:00Z", "text": "x", "price": 1}', "price: Extra inputs are not permitted"),
    ],
)
def test_event_feed_names_the_bad_line(tmp_path, line: str, reason: str) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps(FEED[0]) + "\n" + line + "\n")
    with pytest.raises(InputError) as info:
        EventFeed.from_source(str(path))
    assert info.value.field == f"{path}:2" and reason in info.value.reason
    with pytest.raises(InputError, match="is not a file or an http"):
        EventFeed.from_source(str(tmp_path / "nope.jsonl"))


# Forecasts ---------------------------------------------------------------------------------------
def test_forecast_summary_matches_the_forecast_helpers(market_store) -> None:
    closes = market_store.read("AAAUSDT", "60", None, AT, "linear")["close"].iloc[:-1]
    models = {"random-walk": RandomWalkForecaster("random-walk"), "naive": NaiveForecaster("naive")}
    levels = (0.05, 0.1, 0.5, 0.9, 0.95)
    doc = forecast_symbol("AAAUSDT", closes, models, {"random-walk": 1.0, "naive": 1.0}, "60", 24, levels, 256)
    summary = summarise_forecast(doc)
    ens = doc["ensemble"]
    last = closes.iloc[-1]
    assert summary.horizon == 24 and summary.members == ["naive", "random-walk"]
    assert summary.expected_return == pytest.approx(ens["mean"][-1] / last - 1)
    assert summary.q10 == pytest.approx(ens["quantiles"]["0.1"][-1] / last - 1)
    assert summary.q50 == pytest.approx(ens["quantiles"]["0.5"][-1] / last - 1)
    assert summary.q90 == pytest.approx(ens["quantiles"]["0.9"][-1] / last - 1)
    assert summary.disagreement == pytest.approx(ens["disagreement"][-1] / last)
    quantiles = np.array([[[ens["quantiles"][f"{q:g}"][h] for q in levels] for h in range(24)]])
    fc = Forecast("ensemble", np.array([ens["mean"]]), quantiles, levels, np.array([last]))
    assert summary.var_95 == pytest.approx(fc.value_at_risk(0.95)[0]) and summary.var_95 > 0
    assert summary.es_95 == pytest.approx(fc.expected_shortfall(0.95)[0]) and summary.es_95 >= summary.var_95
    with pytest.raises(InputError, match="forecast: not a forecast document"):
        summarise_forecast({"ensemble": {"mean": []}})


def test_in_process_forecasts_from_the_registry(market_store) -> None:
    settings = load_settings()
    forecasts = make_forecasts(settings, None, models=["random-walk", "naive"], horizon=12, context=128)
    assert isinstance(forecasts, InProcessForecasts)
    data = gather_store(market_store, "BBBUSDT", "linear", "60", AT, lookback=300)
    summary = forecasts("BBBUSDT", data.closes(), "60")
    assert summary.horizon == 12 and summary.members == ["naive", "random-walk"]
    assert summary.q10 < summary.q50 < summary.q90
    obs = data.observe(forecast=summary)
    assert obs.forecast == summary and data.closes().index[-1] == AT - 1.5 * HOUR
