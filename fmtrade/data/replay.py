"""A Bybit-v5-compatible HTTP server that replays a :class:`~fmtrade.data.store.Store`.

Tests, the demo and paper trading run offline against it with the real client.
It mimics Bybit's public market endpoints: same paths and query parameters,
page limits, newest-first ordering, cursors, the envelope
``{retCode, retMsg, result, retExtInfo, time}`` and retCode 10001 for bad
parameters (https://bybit-exchange.github.io/docs/v5/market/kline and siblings).

Replay clock: ``now`` (default: the wall clock) is what ``/v5/market/time``
reports; with ``speed`` > 0 it advances ``speed`` x wall time from ``now``
(``speed=3600``: an hour a second), with ``speed=0`` (default) it stays at
``now``. Nothing after the clock is served, and the bar containing it is
served as a still-open bar: open as stored, close moved linearly from open
towards the stored close by the elapsed fraction of the bar, high/low the envelope of
those two, volume and turnover scaled by the same fraction. So a client that
stored the open bar would hold values that differ from the final bar.

Derived data, labelled as such:

* instruments: tick size ``10**(floor(log10(price)) - 5)`` (about six
  significant digits: 0.1 at 30 000, 0.01 at 2 000), quantity step
  ``10**-floor(log10(price))`` (one step is worth 1-10 quote units), from the
  last close at the replay clock; launch time = first stored bar;
* spread: :data:`SPREAD_PER_DAILY_VOL` x the last day's realised volatility of
  the price (2 bp at 2 % a day), at least one tick, whole ticks, straddling the
  last close;
* orderbook: ``result["synthetic"] = true``; best bid/ask are that spread's
  edges, further levels one tick apart, sizes volume-proportional with
  deterministic noise seeded by symbol and time;
* tickers: last price = last close, bid1/ask1 the book's, 24h stats from the
  bars of the last 24 hours;
* ``category=option`` (instruments-info, tickers): an empty list, as Bybit
  answers when it lists no option for the request, so ccxt's ``load_markets`` works.

Kline pages: with ``start`` the server returns the ``limit`` oldest bars at or
after it (up to ``end``), without it the ``limit`` newest bars up to ``end``,
both newest first, as Bybit was observed to do. Only intervals stored for a
symbol are served (no resampling).

Private endpoints (``accounts={api_key: secret}``): signed order, position and wallet endpoints
over a simulated account, see :mod:`fmtrade.data.replay_account`.

Fault injection (:class:`Faults`) answers chosen requests with retCode 10006
(plus ``X-Bapi-Limit-Reset-Timestamp``), HTTP 429/500, a delay, a truncated
JSON body, or a well-formed body whose first row is malformed. A request is
handled before a delay, so a delayed ``/v5/order/create`` has placed its order
when the client gives up waiting, as on an exchange.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import socket
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import uvicorn
from fastapi import FastAPI, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from fmtrade.data.bybit import (
    FUNDING_LIMIT,
    INSTRUMENTS_LIMIT,
    KLINE_LIMIT,
    OPEN_INTEREST_INTERVALS,
    OPEN_INTEREST_LIMIT,
    ORDERBOOK_MAX_DEPTH,
    parse_time,
    to_ms,
)
from fmtrade.data.intervals import BYBIT_INTERVALS, CATEGORIES, interval_offset
from fmtrade.data.replay_account import Reject, SimulatedAccounts
from fmtrade.data.store import Store
from fmtrade.errors import DataError, InputError

log = logging.getLogger(__name__)

FaultKind = Literal["ok", "rate_limit", "http_429", "http_500", "delay", "truncate", "corrupt"]
_ORDERBOOK_DEFAULT = {"spot": 1, "linear": 25, "inverse": 25}
_QUOTES = ("USDT", "USDC", "USD", "BTC", "ETH")
SPREAD_PER_DAILY_VOL = 0.01  # relative spread per unit of daily volatility: 2 bp at 2 % a day
_MS_PER_DAY = 86_400_000


class Faults(BaseModel):
    """Which requests to sabotage. Requests to ``paths`` are numbered from 1; ``schedule[i]`` decides
    request i+1, after that request n gets the first rule whose ``*_every_n`` divides n."""

    model_config = ConfigDict(extra="forbid")

    schedule: list[FaultKind] = Field(default_factory=list)
    rate_limit_every_n: int = Field(0, ge=0, description="retCode 10006 'Too many visits!' (HTTP 200)")
    http_429_every_n: int = Field(0, ge=0)
    http_500_every_n: int = Field(0, ge=0)
    delay_every_n: int = Field(0, ge=0, description="answer only after delay_s (provokes client timeouts)")
    truncate_every_n: int = Field(0, ge=0, description="JSON body cut in half")
    corrupt_every_n: int = Field(0, ge=0, description="valid JSON, first row malformed")
    delay_s: float = Field(1.0, ge=0)
    reset_ms: int = Field(50, ge=0, description="X-Bapi-Limit-Reset-Timestamp = now + reset_ms on rate limit")
    paths: list[str] | None = Field(None, description="faulted paths, private ones too (None: every /v5/market path)")

    def decide(self, n: int) -> FaultKind:
        if n <= len(self.schedule):
            return self.schedule[n - 1]
        rules: list[tuple[int, FaultKind]] = [
            (self.rate_limit_every_n, "rate_limit"), (self.http_429_every_n, "http_429"),
            (self.http_500_every_n, "http_500"), (self.delay_every_n, "delay"),
            (self.truncate_every_n, "truncate"), (self.corrupt_every_n, "corrupt"),
        ]  # fmt: skip
        return next((kind for every, kind in rules if every and n % every == 0), "ok")


@dataclass
class RequestRecord:
    path: str
    params: dict[str, Any]
    fault: FaultKind
    ret_code: int | None


class ParamError(Reject):
    """Answered as retCode 10001, like Bybit's parameter errors."""


@dataclass
class _Bars:
    """One stored bar series, cached as arrays plus pre-formatted Bybit rows."""

    ms: np.ndarray
    values: np.ndarray  # (n, 6) open high low close volume turnover
    rows: list[list[str]] = field(repr=False)


def _fmt(x: float) -> str:
    """Shortest decimal string that parses back to exactly ``x`` (Bybit sends decimals, not 1e-05)."""
    return np.format_float_positional(x, unique=True, trim="-")


def _magnitude(price: float) -> int:
    return math.floor(math.log10(price)) if price > 0 and math.isfinite(price) else 0


def tick_size(price: float) -> float:
    """About six significant digits of ``price`` (see the module docstring)."""
    return 10.0 ** (_magnitude(price) - 5)


def qty_step(price: float) -> float:
    return 10.0 ** (-_magnitude(price))


def _decimals(step: float) -> int:
    return max(0, -math.floor(math.log10(step) + 1e-9))


def _int_param(params: dict[str, str], name: str, default: int | None = None) -> int | None:
    raw = params.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ParamError(f"params error: {name} must be an integer, got {raw!r}") from exc


def _limit(params: dict[str, str], default: int, maximum: int) -> int:
    value = _int_param(params, "limit", default)
    if value is None or not 1 <= value <= maximum:
        raise ParamError(f"params error: limit must be in [1, {maximum}], got {value}")
    return value


class _Replay:
    """Request handling, independent of the HTTP framework."""

    def __init__(self, store: Store, now: pd.Timestamp | None, faults: Faults | None, speed: float = 0.0) -> None:
        self.store = store
        self.speed = speed
        self.set_now(now)
        self.faults = faults or Faults()
        self.records: list[RequestRecord] = []
        self._counter = 0
        self._lock = threading.Lock()
        self._bars: dict[tuple[str, str, str], _Bars] = {}
        self._points: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray]] = {}
        self._series: list[tuple[str, str, str]] | None = None

    # Clock and data ------------------------------------------------------------------
    def set_now(self, now: pd.Timestamp | None) -> None:
        """Start the replay clock at ``now`` (None: follow the wall clock)."""
        self.now = now
        self._anchor_wall_ms = time.time() * 1000

    def now_ms(self) -> int:
        wall = time.time() * 1000
        if self.now is None:
            return int(wall)
        return to_ms(self.now) + int((wall - self._anchor_wall_ms) * self.speed)

    def series(self) -> list[tuple[str, str, str]]:
        if self._series is None:
            self._series = [(key[0], key[1], key[2]) for key in self.store.series()]
        return self._series

    def reset_log(self) -> None:
        with self._lock:
            self.records.clear()
            self._counter = 0

    def reload(self) -> None:
        with self._lock:
            self._bars.clear()
            self._points.clear()
            self._series = None

    def symbols(self, category: str) -> list[str]:
        return sorted({s for c, s, _ in self.series() if c == category})

    def bars(self, category: str, symbol: str, interval: str) -> _Bars:
        key = (category, symbol, interval)
        cached = self._bars.get(key)
        if cached is None:
            frame = self.store.read(symbol, interval, category=category)
            ms = (frame.index.as_unit("ms").asi8).astype("int64")
            values = frame[["open", "high", "low", "close", "volume", "turnover"]].to_numpy("float64")
            # Exchange dumps imported without quote turnover (Binance OHLCV) store NaN; Bybit always
            # sends a number, so serve volume x typical price (h+l+c)/3 as an estimate for those rows.
            missing = ~np.isfinite(values[:, 5])
            values[missing, 5] = values[missing, 4] * values[missing, 1:4].mean(axis=1)
            rows = [[str(t), *map(_fmt, row)] for t, row in zip(ms.tolist(), values.tolist(), strict=True)]
            cached = self._bars[key] = _Bars(ms, values, rows)
        return cached

    def funding(self, category: str, symbol: str) -> tuple[np.ndarray, np.ndarray]:
        """(ms timestamps, funding rates), cached."""
        key = ("funding", category, symbol)
        if key not in self._points:
            frame = self.store.read_funding(symbol, category=category)
            self._points[key] = (frame.index.as_unit("ms").asi8, frame["funding_rate"].to_numpy("float64"))
        return self._points[key]

    def open_interest_series(self, category: str, symbol: str, interval_time: str) -> tuple[np.ndarray, np.ndarray]:
        key = ("oi", category, symbol, interval_time)
        if key not in self._points:
            frame = self.store.read_open_interest(symbol, interval_time, category=category)
            self._points[key] = (frame.index.as_unit("ms").asi8, frame["open_interest"].to_numpy("float64"))
        return self._points[key]

    def finest_interval(self, category: str, symbol: str) -> str:
        held = {i for c, s, i in self.series() if c == category and s == symbol}
        return next(i for i in BYBIT_INTERVALS if i in held)

    def served_until(self, bars: _Bars, now: int) -> int:
        """Number of bars whose open time is at or before ``now``."""
        return int(np.searchsorted(bars.ms, now, side="right"))

    def partial_row(self, bars: _Bars, i: int, interval: str, now: int) -> list[float] | None:
        """The still-open version of bar ``i`` if it contains ``now``, else None."""
        opened = pd.Timestamp(int(bars.ms[i]), unit="ms", tz="UTC")
        length_ms = to_ms(opened + interval_offset(interval)) - int(bars.ms[i])
        if now >= int(bars.ms[i]) + length_ms:
            return None
        frac = (now - int(bars.ms[i])) / length_ms
        o, _, _, c, v, t = bars.values[i]
        close = o + (c - o) * frac
        return [o, max(o, close), min(o, close), close, v * frac, t * frac]

    def last_close(self, category: str, symbol: str, now: int) -> tuple[float, float]:
        """(close, volume) of the newest bar served at ``now`` (partial if still open)."""
        interval = self.finest_interval(category, symbol)
        bars = self.bars(category, symbol, interval)
        n = self.served_until(bars, now)
        if n == 0:
            raise ParamError(f"no data for {symbol} before the replay clock", 10001)
        row = self.partial_row(bars, n - 1, interval, now) or bars.values[n - 1].tolist()
        return float(row[3]), float(row[4])

    def daily_volatility(self, category: str, symbol: str, now: int) -> float:
        """Realised volatility of the last day: sqrt of the summed squared log returns of the closes of the
        bars opened in the last day up to the last price (the newest bar's final close is never used)."""
        bars = self.bars(category, symbol, self.finest_interval(category, symbol))
        n = self.served_until(bars, now)
        first = int(np.searchsorted(bars.ms, now - _MS_PER_DAY, side="left"))
        closes = np.append(bars.values[max(0, first - 1) : max(0, n - 1), 3], self.last_close(category, symbol, now)[0])
        closes = closes[closes > 0]
        return float(np.sqrt(np.sum(np.diff(np.log(closes)) ** 2))) if len(closes) > 1 else 0.0

    def book_edges(self, category: str, symbol: str, now: int) -> tuple[int, int, float, float]:
        """(best bid in ticks, best ask in ticks, tick size, last price): a volatility-scaled spread of whole
        ticks (at least one) around the last price."""
        price, _ = self.last_close(category, symbol, now)
        tick = tick_size(price)
        relative = SPREAD_PER_DAILY_VOL * self.daily_volatility(category, symbol, now)
        width = max(1, math.ceil(price * relative / tick - 1e-9))
        bid = math.floor(price / tick) - (width - 1) // 2
        return bid, bid + width, tick, price

    def quote(self, category: str, symbol: str, now: int) -> tuple[float, float, float]:
        """(best bid, best ask, last price) as the book and tickers serve them."""
        bid, ask, tick, price = self.book_edges(category, symbol, now)
        dp = _decimals(tick)
        return round(bid * tick, dp), round(ask * tick, dp), price

    def instrument(self, category: str, symbol: str, now: int) -> dict[str, Any]:
        bars = self.bars(category, symbol, self.finest_interval(category, symbol))
        price, _ = self.last_close(category, symbol, now)
        return self._instrument(category, symbol, price, int(bars.ms[0]))

    # Validation --------------------------------------------------------------------------
    @staticmethod
    def category(params: dict[str, str], default: str | None = "linear", allowed: tuple[str, ...] = CATEGORIES) -> str:
        value = params.get("category") or default
        if value not in allowed:
            raise ParamError("Illegal category")
        return value

    def symbol(self, params: dict[str, str], category: str) -> str:
        symbol = self.optional_symbol(params, category)
        if symbol is None:
            raise ParamError("params error: symbol is required")
        return symbol

    def optional_symbol(self, params: dict[str, str], category: str) -> str | None:
        value = params.get("symbol")
        if not value:
            return None
        if value not in self.symbols(category):
            raise ParamError("Not supported symbols")
        return value

    # Endpoints ---------------------------------------------------------------------------
    def time(self, params: dict[str, str]) -> dict[str, Any]:
        now = self.now_ms()
        return {"timeSecond": str(now // 1000), "timeNano": str(now * 1_000_000)}

    def kline(self, params: dict[str, str]) -> dict[str, Any]:
        category = self.category(params)
        symbol = self.symbol(params, category)
        interval = params.get("interval", "")
        if interval not in BYBIT_INTERVALS:
            raise ParamError("Invalid period!")
        if (category, symbol, interval) not in self.series():
            raise ParamError(f"Invalid period! (the replay store holds no {interval} bars for {symbol})")
        limit = _limit(params, 200, KLINE_LIMIT)
        start, end = _int_param(params, "start"), _int_param(params, "end")
        now = self.now_ms()
        hi = now if end is None else min(end, now)
        bars = self.bars(category, symbol, interval)
        upper = self.served_until(bars, hi)
        if start is not None:
            lower = int(np.searchsorted(bars.ms, start, side="left"))
            upper = min(upper, lower + limit)
        else:
            lower = max(0, upper - limit)
        rows = bars.rows[lower:upper] if upper > lower else []
        if rows:
            partial = self.partial_row(bars, upper - 1, interval, now)
            if partial is not None:
                rows = [*rows[:-1], [str(int(bars.ms[upper - 1])), *map(_fmt, partial)]]
        return {"category": category, "symbol": symbol, "list": rows[::-1]}

    def _window(self, params: dict[str, str], stamps: np.ndarray, limit: int) -> tuple[int, int]:
        """Indices [lower, upper) of the newest ``limit`` records in [startTime, min(endTime, now)]."""
        start, end = _int_param(params, "startTime"), _int_param(params, "endTime")
        if start is not None and end is None:
            raise ParamError("params error: startTime requires endTime")
        now = self.now_ms()
        hi = now if end is None else min(end, now)
        cursor = params.get("cursor")
        if cursor:
            try:
                hi = min(hi, int(cursor.removeprefix("before:")) - 1)
            except ValueError as exc:
                raise ParamError(f"params error: invalid cursor {cursor!r}") from exc
        upper = int(np.searchsorted(stamps, hi, side="right"))
        floor_ = int(np.searchsorted(stamps, start, side="left")) if start is not None else 0
        return max(floor_, upper - limit), max(floor_, upper)

    def funding_history(self, params: dict[str, str]) -> dict[str, Any]:
        category = self.category(params, default=None, allowed=("linear", "inverse"))
        symbol = self.symbol(params, category)
        limit = _limit(params, FUNDING_LIMIT, FUNDING_LIMIT)
        stamps, rates = self.funding(category, symbol)
        lower, upper = self._window(params, stamps, limit)
        rows = [
            {"symbol": symbol, "fundingRate": _fmt(rates[i]), "fundingRateTimestamp": str(stamps[i])}
            for i in range(upper - 1, lower - 1, -1)
        ]
        return {"category": category, "list": rows}

    def open_interest(self, params: dict[str, str]) -> dict[str, Any]:
        category = self.category(params, default=None, allowed=("linear", "inverse"))
        symbol = self.symbol(params, category)
        interval_time = params.get("intervalTime", "")
        if interval_time not in OPEN_INTEREST_INTERVALS:
            raise ParamError("params error: invalid intervalTime")
        limit = _limit(params, 50, OPEN_INTEREST_LIMIT)
        stamps, values = self.open_interest_series(category, symbol, interval_time)
        lower, upper = self._window(params, stamps, limit)
        start = _int_param(params, "startTime")
        floor_ = int(np.searchsorted(stamps, start, side="left")) if start is not None else 0
        rows = [{"openInterest": _fmt(values[i]), "timestamp": str(stamps[i])} for i in range(upper - 1, lower - 1, -1)]
        more = lower > floor_ and upper > lower
        return {
            "symbol": symbol, "category": category, "list": rows,
            "nextPageCursor": f"before:{stamps[lower]}" if more else "",
        }  # fmt: skip

    def orderbook(self, params: dict[str, str]) -> dict[str, Any]:
        category = self.category(params, default=None)
        symbol = self.symbol(params, category)
        limit = _limit(params, _ORDERBOOK_DEFAULT[category], ORDERBOOK_MAX_DEPTH[category])
        now = self.now_ms()
        price, volume = self.last_close(category, symbol, now)
        bid_tick, ask_tick, tick, _ = self.book_edges(category, symbol, now)
        step = qty_step(price)
        price_dp, qty_dp = _decimals(tick), _decimals(step)
        rng = np.random.default_rng(zlib.crc32(f"{category}:{symbol}:{now}".encode()))
        base = max(step, volume / 2000)

        def side(first_tick: int, direction: int) -> list[list[str]]:
            ticks = [first_tick + direction * i for i in range(limit) if first_tick + direction * i >= 1]
            sizes = np.maximum(step, np.round(base * (0.5 + rng.random(len(ticks))) / step) * step)
            return [[f"{k * tick:.{price_dp}f}", f"{q:.{qty_dp}f}"] for k, q in zip(ticks, sizes, strict=True)]

        return {
            "s": symbol, "b": side(bid_tick, -1), "a": side(ask_tick, +1), "ts": now, "u": now // 1000,
            "seq": now, "cts": now, "synthetic": True,
        }  # fmt: skip

    def tickers(self, params: dict[str, str]) -> dict[str, Any]:
        category = self.category(params, default=None, allowed=(*CATEGORIES, "option"))
        if category == "option":  # Bybit lists no option here when none matches; the store holds none
            return {"category": category, "list": []}
        symbol = self.optional_symbol(params, category)
        now = self.now_ms()
        rows = []
        for sym in [symbol] if symbol else self.symbols(category):
            interval = self.finest_interval(category, sym)
            bars = self.bars(category, sym, interval)
            n = self.served_until(bars, now)
            if n == 0:
                continue
            # The 24 hours up to the newest served bar (at least that bar, even when the store ends early).
            day = int(np.searchsorted(bars.ms, bars.ms[n - 1] - 86_400_000, side="right"))
            window = bars.values[day:n].copy()
            partial = self.partial_row(bars, n - 1, interval, now)
            if partial is not None:
                window[-1] = partial
            last, prev = float(window[-1, 3]), float(window[0, 0])
            bid, ask, _ = self.quote(category, sym, now)
            dp = _decimals(tick_size(last))
            row = {
                "symbol": sym, "lastPrice": _fmt(last), "prevPrice24h": _fmt(prev),
                "price24hPcnt": _fmt(round(last / prev - 1, 6)) if prev else "0",
                "highPrice24h": _fmt(window[:, 1].max()), "lowPrice24h": _fmt(window[:, 2].min()),
                "volume24h": _fmt(window[:, 4].sum()), "turnover24h": _fmt(window[:, 5].sum()),
                "bid1Price": f"{bid:.{dp}f}", "ask1Price": f"{ask:.{dp}f}",
            }  # fmt: skip
            if category != "spot":
                stamps, rates = self.funding(category, sym)
                settled = int(np.searchsorted(stamps, now, side="right"))
                row |= {
                    "markPrice": row["lastPrice"],
                    "indexPrice": row["lastPrice"],
                    "fundingRate": _fmt(rates[settled - 1]) if settled else "",
                }
            rows.append(row)
        return {"category": category, "list": rows}

    def instruments_info(self, params: dict[str, str]) -> dict[str, Any]:
        category = self.category(params, default=None, allowed=(*CATEGORIES, "option"))
        symbol = params.get("symbol")
        limit = _limit(params, 500, INSTRUMENTS_LIMIT)
        trading = params.get("status") in (None, "", "Trading")  # every replayed instrument is trading
        symbols = [s for s in self.symbols(category) if (not symbol or s == symbol) and trading]
        cursor = params.get("cursor") or "0"
        try:
            offset = int(cursor.removeprefix("offset:"))
        except ValueError as exc:
            raise ParamError(f"params error: invalid cursor {cursor!r}") from exc
        now = self.now_ms()
        rows = []
        for sym in symbols[offset : offset + limit]:
            bars = self.bars(category, sym, self.finest_interval(category, sym))
            if self.served_until(bars, now) == 0:
                continue
            rows.append(self.instrument(category, sym, now))
        more = offset + limit < len(symbols)
        return {"category": category, "list": rows, "nextPageCursor": f"offset:{offset + limit}" if more else ""}

    @staticmethod
    def _instrument(category: str, symbol: str, price: float, launch_ms: int) -> dict[str, Any]:
        tick, step = tick_size(price), qty_step(price)
        quote = next((q for q in _QUOTES if symbol.endswith(q) and len(symbol) > len(q)), "USDT")
        tick_s, step_s = _fmt(tick), _fmt(step)
        max_qty = _fmt(step * 10**7)
        row: dict[str, Any] = {
            "symbol": symbol, "status": "Trading", "baseCoin": symbol.removesuffix(quote), "quoteCoin": quote,
            "launchTime": str(launch_ms), "priceScale": str(_decimals(tick)),
            "priceFilter": {"minPrice": tick_s, "maxPrice": _fmt(tick * 10**9), "tickSize": tick_s},
        }  # fmt: skip
        if category == "spot":
            row["lotSizeFilter"] = {
                "basePrecision": step_s,
                "quotePrecision": tick_s,
                "minOrderQty": step_s,
                "maxOrderQty": max_qty,
                "minOrderAmt": "5",
            }
        else:
            row |= {
                "contractType": "LinearPerpetual" if category == "linear" else "InversePerpetual",
                "fundingInterval": 480,
            }
            row["lotSizeFilter"] = {
                "qtyStep": step_s,
                "minOrderQty": step_s,
                "maxOrderQty": max_qty,
                "minNotionalValue": "5",
            }
        return row

    # Dispatch ----------------------------------------------------------------------------
    def handlers(self) -> dict[str, Callable[[dict[str, str]], dict[str, Any]]]:
        return {
            "/v5/market/time": self.time,
            "/v5/market/kline": self.kline,
            "/v5/market/funding/history": self.funding_history,
            "/v5/market/open-interest": self.open_interest,
            "/v5/market/orderbook": self.orderbook,
            "/v5/market/tickers": self.tickers,
            "/v5/market/instruments-info": self.instruments_info,
        }

    def next_fault(self, path: str) -> FaultKind:
        with self._lock:
            paths = self.faults.paths
            if path not in paths if paths is not None else not path.startswith("/v5/market/"):
                return "ok"
            self._counter += 1
            return self.faults.decide(self._counter)

    def envelope(self, code: int, msg: str, result: dict[str, Any]) -> dict[str, Any]:
        return {"retCode": code, "retMsg": msg, "result": result, "retExtInfo": {}, "time": self.now_ms()}


def _corrupt(payload: dict[str, Any]) -> dict[str, Any]:
    """Keep the JSON valid but break the first row (or the result) so a careful client must notice."""
    result = payload.get("result") or {}
    rows = result.get("list")
    if rows:
        rows[0] = rows[0][:-1] if isinstance(rows[0], list) else {}
    elif "b" in result:
        result["b"] = [["not-a-price"]]
    else:
        payload["result"] = None
    return payload


def _not_found() -> Response:
    return Response(status_code=404, content=b'{"detail":"Not Found"}', media_type="application/json")


async def _answer(replay: _Replay, path: str, params: dict[str, Any], call: Callable[[], dict[str, Any]]) -> Response:
    """Run ``call`` under the fault plan and wrap its result (or Reject) in Bybit's envelope."""
    fault = replay.next_fault(path)
    record = RequestRecord(path, params, fault, None)
    replay.records.append(record)
    wall_ms = int(time.time() * 1000)
    headers = {"X-Bapi-Limit": "600", "X-Bapi-Limit-Status": "599", "X-Bapi-Limit-Reset-Timestamp": str(wall_ms)}
    if fault in ("http_429", "http_500"):
        status = 429 if fault == "http_429" else 500
        return Response(status_code=status, content=b"injected fault", headers=headers)
    if fault == "rate_limit":
        record.ret_code = 10006
        headers |= {"X-Bapi-Limit-Status": "0", "X-Bapi-Limit-Reset-Timestamp": str(wall_ms + replay.faults.reset_ms)}
        payload = replay.envelope(10006, "Too many visits!", {})
    else:
        try:
            payload = replay.envelope(0, "OK", call())
            record.ret_code = 0
        except Reject as exc:
            record.ret_code = exc.code
            payload = replay.envelope(exc.code, str(exc), {})
    if fault == "delay":  # after handling: a delayed order is placed, only its answer is late
        await asyncio.sleep(replay.faults.delay_s)
    if fault == "corrupt" and record.ret_code == 0:
        payload = _corrupt(payload)
    body = json.dumps(payload, separators=(",", ":")).encode()
    if fault == "truncate":
        body = body[: len(body) // 2]
    return Response(content=body, media_type="application/json", headers=headers)


def _signed_params(method: str, raw: str, query: dict[str, str]) -> dict[str, Any]:
    """A GET's query parameters or a POST's JSON body object."""
    if method == "GET":
        return query
    try:
        body = json.loads(raw or "{}")
    except json.JSONDecodeError as exc:
        raise Reject(f"params error: the body is not JSON ({exc})") from exc
    if not isinstance(body, dict):
        raise Reject("params error: the body must be a JSON object")
    return body


def create_app(replay: _Replay, accounts: SimulatedAccounts | None = None) -> FastAPI:
    app = FastAPI(title="fmtrade Bybit replay", docs_url=None, redoc_url=None, openapi_url=None)
    handlers = replay.handlers()
    private = accounts.handlers() if accounts is not None else {}

    @app.get("/v5/market/{endpoint:path}")
    async def market(endpoint: str, request: Request) -> Response:
        path = f"/v5/market/{endpoint}"
        handler = handlers.get(path)
        if handler is None:
            return _not_found()
        params = dict(request.query_params)
        return await _answer(replay, path, params, lambda: handler(params))

    @app.api_route("/v5/{endpoint:path}", methods=["GET", "POST"])
    async def signed(endpoint: str, request: Request) -> Response:
        path = f"/v5/{endpoint}"
        handler = private.get((request.method, path))
        if handler is None or accounts is None:
            return _not_found()
        raw = (await request.body()).decode("utf-8", "replace") if request.method == "POST" else request.url.query
        shown: dict[str, Any] = dict(request.query_params)

        def call() -> dict[str, Any]:
            api_key = accounts.authenticate(request.headers, raw)
            params = _signed_params(request.method, raw, dict(request.query_params))
            shown.update(params)
            return handler(api_key, params)

        return await _answer(replay, path, shown, call)

    return app


class ReplayServer:
    """Serve a store over HTTP like Bybit's v5 market API, and with ``accounts`` its private API.

    ``start()`` runs uvicorn in a daemon thread (tests, the demo); ``run()`` serves
    in the foreground until Ctrl-C (``fmtrade data replay``). ``port=0`` picks a free port.
    ``accounts`` maps API keys to secrets (one simulated account each, ``initial_balance`` USDT);
    ``speed`` > 0 runs the replay clock that many times faster than the wall clock from ``now``.
    """

    def __init__(
        self,
        store: Store | str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        now: Any = None,
        faults: Faults | None = None,
        accounts: dict[str, str] | None = None,
        initial_balance: float = 100_000.0,
        speed: float = 0.0,
    ) -> None:
        if speed < 0 or not math.isfinite(speed):
            raise InputError("speed", f"must be a finite number >= 0, got {speed}")
        if initial_balance <= 0:
            raise InputError("initial_balance", f"must be > 0, got {initial_balance}")
        self.store = store if isinstance(store, Store) else Store(str(store))
        self.host = host
        self._replay = _Replay(self.store, parse_time(now, "now") if now is not None else None, faults, speed)
        self.accounts = SimulatedAccounts(self._replay, accounts, initial_balance) if accounts else None
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((host, port))
        except OSError as exc:
            self._sock.close()
            raise DataError(f"replay server cannot listen on {host}:{port}: {exc}") from exc
        self.port = int(self._sock.getsockname()[1])
        app = create_app(self._replay, self.accounts)
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # Replay clock, faults and request log (tests adjust these between calls) ------------
    @property
    def now(self) -> pd.Timestamp | None:
        """Where the replay clock was started (None: the wall clock); see :meth:`clock` for where it is."""
        return self._replay.now

    @now.setter
    def now(self, value: Any) -> None:
        self._replay.set_now(parse_time(value, "now") if value is not None else None)

    def clock(self) -> pd.Timestamp:
        """The replay clock now (what /v5/market/time reports)."""
        return pd.Timestamp(self._replay.now_ms(), unit="ms", tz="UTC")

    @property
    def speed(self) -> float:
        return self._replay.speed

    @speed.setter
    def speed(self, value: float) -> None:
        """Change the clock's rate from where it stands now."""
        if value < 0 or not math.isfinite(value):
            raise InputError("speed", f"must be a finite number >= 0, got {value}")
        current = self.clock() if self._replay.now is not None else None
        self._replay.speed = value
        self._replay.set_now(current)

    @property
    def faults(self) -> Faults:
        return self._replay.faults

    @faults.setter
    def faults(self, value: Faults | None) -> None:
        self._replay.faults = value or Faults()

    @property
    def requests(self) -> list[RequestRecord]:
        return self._replay.records

    def request_counts(self) -> Counter[str]:
        return Counter(record.path for record in self._replay.records)

    def reset_log(self) -> None:
        """Clear the request log and restart fault numbering."""
        self._replay.reset_log()

    def reload(self) -> None:
        """Forget cached series (call after writing to the store while serving)."""
        self._replay.reload()

    # Lifecycle -------------------------------------------------------------------------
    def start(self, timeout_s: float = 10.0) -> ReplayServer:
        if self._thread is not None:
            return self
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name=f"replay:{self.port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise DataError(f"replay server on {self.url} failed to start")
            time.sleep(0.01)
        log.info("replay server for %s listening on %s", self.store.root, self.url)
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
            self._thread = None
        self._sock.close()

    def run(self) -> None:
        """Serve in the foreground until interrupted."""
        log.info("replay server for %s listening on %s", self.store.root, self.url)
        try:
            self._server.run(sockets=[self._sock])
        finally:
            self._sock.close()

    def __enter__(self) -> ReplayServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
