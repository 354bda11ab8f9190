"""Bybit v5 public market-data client (httpx).

Every v5 response is the envelope ``{retCode, retMsg, result, retExtInfo, time}``
(https://bybit-exchange.github.io/docs/v5/intro). This client

* retries transient failures with exponential backoff and jitter: HTTP 429 and
  5xx, timeouts, connection errors, and retCodes 10000 (server timeout),
  10006 (too many visits, waiting until ``X-Bapi-Limit-Reset-Timestamp``),
  10016 (server error) and 10018 (IP rate limit) (https://bybit-exchange.github.io/docs/v5/error);
* treats a body it cannot parse (bad JSON, missing fields, malformed rows) as a
  transient failure too, and raises once attempts run out: a truncated page
  never becomes a silently shorter series;
* raises :class:`BybitError` at once, without retry, for any other retCode
  (10001 parameter errors: unknown symbol, bad interval...) and for HTTP 4xx;
* paces requests with a :class:`~fmtrade.data.ratelimit.RateLimiter`.

Series come back as DataFrames with the store's column names and a UTC
``DatetimeIndex`` named ``timestamp``, ascending. The client returns what the
exchange returns, including a still-open current bar: deciding what is final
(with :meth:`BybitClient.server_time`) is the store's job.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import httpx
import numpy as np
import pandas as pd

from fmtrade.config import BYBIT_MAINNET, DataSettings
from fmtrade.data.intervals import check_category, check_interval, interval_offset
from fmtrade.data.ratelimit import RateLimiter
from fmtrade.errors import DataError, FmtradeError, InputError

log = logging.getLogger(__name__)

KLINE_COLUMNS = ("open", "high", "low", "close", "volume", "turnover")
# Page sizes are each endpoint's documented maximum (https://bybit-exchange.github.io/docs/v5/market/kline,
# .../history-fund-rate, .../open-interest, .../instrument).
KLINE_LIMIT = 1000
FUNDING_LIMIT = 200
OPEN_INTEREST_LIMIT = 200
INSTRUMENTS_LIMIT = 1000
# Orderbook depth per category (https://bybit-exchange.github.io/docs/v5/market/orderbook).
ORDERBOOK_MAX_DEPTH = {"spot": 200, "linear": 500, "inverse": 500}
OPEN_INTEREST_INTERVALS = ("5min", "15min", "30min", "1h", "4h", "1d")
DERIVATIVES = ("linear", "inverse")
# retCodes worth retrying: server timeout, too many visits, server error, IP rate limit.
RETRYABLE_RET_CODES = frozenset({10000, 10006, 10016, 10018})
RATE_LIMIT_RET_CODES = frozenset({10006, 10018})
_DEFAULT = object()

T = TypeVar("T")


class BybitError(FmtradeError):
    """Bybit refused the request (retCode != 0 and not transient, or HTTP 4xx); retrying will not help."""

    def __init__(self, ret_code: int, ret_msg: str, path: str = "", params: dict[str, Any] | None = None) -> None:
        self.ret_code = ret_code
        self.ret_msg = ret_msg
        self.path = path
        self.params = dict(params or {})
        shown = " ".join(f"{k}={v}" for k, v in self.params.items())
        super().__init__(f"Bybit {path} refused ({shown}): retCode {ret_code}: {ret_msg}")


class BybitUnavailableError(DataError):
    """Every attempt failed with a transient fault (rate limit, 5xx, timeout, malformed body)."""

    def __init__(self, path: str, attempts: int, last: str) -> None:
        self.path = path
        self.attempts = attempts
        self.last = last
        super().__init__(f"Bybit {path} failed after {attempts} attempts; last: {last}")


class _Transient(Exception):
    """One attempt failed in a way worth retrying; ``wait_s`` is a server-imposed minimum wait."""

    def __init__(self, reason: str, wait_s: float = 0.0) -> None:
        super().__init__(reason)
        self.wait_s = wait_s


class MalformedResponse(_Transient):
    """The body parsed as JSON but does not have the documented shape."""


def parse_time(value: Any, field: str) -> pd.Timestamp:
    """datetime / Timestamp / ISO string / epoch milliseconds -> tz-aware UTC Timestamp (naive means UTC)."""
    try:
        if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
            ts = pd.Timestamp(int(value), unit="ms")
        elif isinstance(value, (str, datetime, pd.Timestamp, np.datetime64)):
            ts = pd.Timestamp(value)
        else:
            raise InputError(field, f"expected a datetime, ISO string or epoch ms, got {type(value).__name__}")
    except (ValueError, OverflowError) as exc:
        raise InputError(field, f"not a valid time: {value!r} ({exc})") from exc
    if ts is pd.NaT:
        raise InputError(field, f"not a valid time: {value!r}")
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def to_ms(ts: pd.Timestamp) -> int:
    """Epoch milliseconds (``Timestamp.value`` is nanoseconds whatever the unit)."""
    return int(ts.value // 1_000_000)


def _range_ms(start: Any, end: Any) -> tuple[int, int]:
    """[start, end] in epoch ms; ``end`` None means now."""
    lo = to_ms(parse_time(start, "start"))
    hi = to_ms(parse_time(end, "end")) if end is not None else to_ms(pd.Timestamp.now("UTC"))
    if hi < lo:
        raise InputError("end", f"must not be before start ({start} > {end})")
    return lo, hi


def _utc_index(ms: list[int] | np.ndarray) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(pd.to_datetime(np.asarray(ms, dtype="int64"), unit="ms", utc=True), name="timestamp")


def _empty_frame(columns: tuple[str, ...]) -> pd.DataFrame:
    return pd.DataFrame({c: np.array([], dtype="float64") for c in columns}, index=_utc_index([]))


def _result_list(result: dict[str, Any], key: str = "list") -> list[Any]:
    rows = result.get(key)
    if not isinstance(rows, list):
        raise MalformedResponse(f"result.{key} is missing or not a list")
    return rows


def _records_frame(rows: list[Any], time_key: str, fields: dict[str, str], lo_ms: int, hi_ms: int) -> pd.DataFrame:
    """Objects with a ms timestamp field and numeric string fields -> ascending frame; any bad row is malformed."""
    stamps: list[int] = []
    values: dict[str, list[float]] = {col: [] for col in fields.values()}
    for i, row in enumerate(rows):
        try:
            stamp = int(row[time_key])
            for key, col in fields.items():
                values[col].append(float(row[key]))
        except (KeyError, TypeError, ValueError) as exc:
            raise MalformedResponse(f"row {i} is malformed: {row!r}") from exc
        if not lo_ms <= stamp <= hi_ms:
            raise MalformedResponse(f"row {i} timestamp {stamp} is outside the requested range [{lo_ms}, {hi_ms}]")
        stamps.append(stamp)
    frame = pd.DataFrame(values, index=_utc_index(stamps), dtype="float64")
    return frame.sort_index()


def _ascending_unique(frames: list[pd.DataFrame], columns: tuple[str, ...]) -> pd.DataFrame:
    if not frames:
        return _empty_frame(columns)
    out = pd.concat(frames)
    return out[~out.index.duplicated(keep="last")].sort_index()


@dataclass(frozen=True)
class OrderBook:
    """One orderbook snapshot; levels are (price, size), bids best-first (descending), asks ascending.

    ``synthetic`` is True when the book was made up from bars (fmtrade's replay server), never for Bybit.
    """

    symbol: str
    bids: tuple[tuple[float, float], ...]
    asks: tuple[tuple[float, float], ...]
    ts: pd.Timestamp
    synthetic: bool = False

    @property
    def best_bid(self) -> float:
        return self.bids[0][0] if self.bids else float("nan")

    @property
    def best_ask(self) -> float:
        return self.asks[0][0] if self.asks else float("nan")

    @property
    def mid(self) -> float:
        return (self.best_bid + self.best_ask) / 2

    @property
    def spread(self) -> float:
        return self.best_ask - self.best_bid

    @property
    def bid_volume(self) -> float:
        return float(sum(size for _, size in self.bids))

    @property
    def ask_volume(self) -> float:
        return float(sum(size for _, size in self.asks))

    @property
    def imbalance(self) -> float:
        """(bid volume - ask volume) / total, in [-1, 1]; > 0 means more resting buy interest."""
        total = self.bid_volume + self.ask_volume
        return (self.bid_volume - self.ask_volume) / total if total > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "ts": self.ts.isoformat(),
            "synthetic": self.synthetic,
            "best_bid": self.best_bid,
            "best_ask": self.best_ask,
            "mid": self.mid,
            "spread": self.spread,
            "bid_volume": self.bid_volume,
            "ask_volume": self.ask_volume,
            "imbalance": self.imbalance,
            "bids": [list(level) for level in self.bids],
            "asks": [list(level) for level in self.asks],
        }


@dataclass(frozen=True)
class Instrument:
    """Trading rules of one symbol (https://bybit-exchange.github.io/docs/v5/market/instrument).

    Spot has no ``qtyStep``; its ``basePrecision`` plays that role.
    """

    category: str
    symbol: str
    status: str
    base_coin: str
    quote_coin: str
    tick_size: float
    qty_step: float
    min_qty: float
    max_qty: float
    min_notional: float | None = None
    launch_time: pd.Timestamp | None = None

    @classmethod
    def from_bybit(cls, category: str, row: dict[str, Any]) -> Instrument:
        try:
            lot = row["lotSizeFilter"]
            step = lot.get("qtyStep") or lot.get("basePrecision")
            notional = lot.get("minNotionalValue") or lot.get("minOrderAmt")
            launch = row.get("launchTime")
            return cls(
                category=category,
                symbol=str(row["symbol"]),
                status=str(row["status"]),
                base_coin=str(row.get("baseCoin", "")),
                quote_coin=str(row.get("quoteCoin", "")),
                tick_size=float(row["priceFilter"]["tickSize"]),
                qty_step=float(step),
                min_qty=float(lot["minOrderQty"]),
                max_qty=float(lot["maxOrderQty"]),
                min_notional=float(notional) if notional not in (None, "") else None,
                launch_time=pd.Timestamp(int(launch), unit="ms", tz="UTC") if launch not in (None, "", "0") else None,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MalformedResponse(f"instrument row is malformed: {row!r}") from exc


class BybitClient:
    """Synchronous client for Bybit's public v5 market endpoints (mainnet, testnet or fmtrade's replay server)."""

    def __init__(
        self,
        base_url: str = BYBIT_MAINNET,
        *,
        timeout_s: float = 10.0,
        max_attempts: int = 6,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        rate_limiter: RateLimiter | None | object = _DEFAULT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if max_attempts < 1:
            raise InputError("max_attempts", f"must be >= 1, got {max_attempts}")
        self.base_url = base_url.rstrip("/")
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.rate_limiter: RateLimiter | None = (
            RateLimiter(DataSettings().rate_limit_per_s) if rate_limiter is _DEFAULT else rate_limiter  # type: ignore[assignment]
        )
        self.requests_sent = 0
        self._http = httpx.Client(
            base_url=self.base_url, timeout=timeout_s, transport=transport, headers={"User-Agent": "fmtrade"}
        )

    @classmethod
    def from_settings(cls, data: DataSettings, base_url: str | None = None) -> BybitClient:
        return cls(
            base_url or data.base_url,
            timeout_s=data.timeout_s,
            max_attempts=data.max_attempts,
            backoff_base_s=data.backoff_base_s,
            backoff_max_s=data.backoff_max_s,
            rate_limiter=RateLimiter.from_settings(data),
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> BybitClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Transport ---------------------------------------------------------------------
    def _backoff(self, attempt: int, server_wait_s: float) -> float:
        """Exponential backoff with "equal jitter", never shorter than what the server asked for."""
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
        delay = ceiling / 2 + random.uniform(0, ceiling / 2)
        return min(self.backoff_max_s, max(delay, server_wait_s))

    @staticmethod
    def _reset_wait(response: httpx.Response) -> float:
        """Seconds until ``X-Bapi-Limit-Reset-Timestamp`` (ms), 0 when absent or past."""
        raw = response.headers.get("X-Bapi-Limit-Reset-Timestamp")
        try:
            return max(0.0, int(raw) / 1000 - time.time()) if raw else 0.0
        except ValueError:
            return 0.0

    def _attempt(self, path: str, params: dict[str, Any]) -> dict[str, Any]:
        """One HTTP request; returns ``result`` or raises _Transient / BybitError."""
        if self.rate_limiter is not None:
            self.rate_limiter.acquire()
        self.requests_sent += 1
        try:
            response = self._http.get(path, params=params)
        except httpx.TimeoutException as exc:
            raise _Transient(f"timeout ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise _Transient(f"connection error ({type(exc).__name__}: {exc})") from exc
        if response.status_code == 429 or response.status_code >= 500:
            raise _Transient(f"HTTP {response.status_code}", self._reset_wait(response))
        if response.status_code >= 400:
            raise BybitError(response.status_code, f"HTTP {response.status_code}: {response.text[:200]}", path, params)
        try:
            payload = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise MalformedResponse(f"body is not valid JSON ({exc}); {len(response.content)} bytes") from exc
        if not isinstance(payload, dict) or not isinstance(payload.get("retCode"), int):
            raise MalformedResponse("body lacks the v5 envelope (retCode)")
        code, msg = payload["retCode"], str(payload.get("retMsg", ""))
        if code in RETRYABLE_RET_CODES:
            wait = self._reset_wait(response) if code in RATE_LIMIT_RET_CODES else 0.0
            raise _Transient(f"retCode {code}: {msg}", wait)
        if code != 0:
            raise BybitError(code, msg, path, params)
        result = payload.get("result")
        if not isinstance(result, dict):
            raise MalformedResponse("envelope has no result object")
        return result

    def _call(self, path: str, params: dict[str, Any], parse: Callable[[dict[str, Any]], T]) -> T:
        """GET ``path`` and ``parse`` its result, retrying transient faults (a parse failure included)."""
        for attempt in range(1, self.max_attempts + 1):
            try:
                return parse(self._attempt(path, params))
            except _Transient as exc:
                if attempt == self.max_attempts:
                    raise BybitUnavailableError(path, attempt, str(exc)) from exc
                delay = self._backoff(attempt, exc.wait_s)
                log.warning(
                    "Bybit %s attempt %d/%d: %s; retrying in %.2fs", path, attempt, self.max_attempts, exc, delay
                )
                time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    # Endpoints ---------------------------------------------------------------------
    def server_time(self) -> pd.Timestamp:
        """Exchange clock (/v5/market/time): decides which bar is still open."""

        def parse(result: dict[str, Any]) -> pd.Timestamp:
            try:
                if result.get("timeNano"):
                    return pd.Timestamp(int(result["timeNano"]), unit="ns", tz="UTC")
                return pd.Timestamp(int(result["timeSecond"]), unit="s", tz="UTC")
            except (KeyError, TypeError, ValueError) as exc:
                raise MalformedResponse(f"time result is malformed: {result!r}") from exc

        return self._call("/v5/market/time", {}, parse)

    def iter_klines(
        self, category: str, symbol: str, interval: str, start: Any, end: Any = None
    ) -> Iterator[pd.DataFrame]:
        """Bars whose open time is in [start, end] (end default: now), one ascending DataFrame per page.

        Bybit answers at most 1000 bars per request, newest first
        (https://bybit-exchange.github.io/docs/v5/market/kline). Each request asks for a window that
        holds at most ``KLINE_LIMIT`` bars, walking forward, so which end of an oversized window Bybit
        would keep never matters and pages arrive oldest first (a sync can commit each one). Empty
        windows (before listing, outages) yield nothing.
        """
        category, interval = check_category(category), check_interval(interval)
        lo, hi = _range_ms(start, end)
        # Shortest bar length: 28 days for monthly bars, so a window never spans more than the limit.
        offset = interval_offset(interval)
        bar_ms = 28 * 86_400_000 if not isinstance(offset, pd.Timedelta) else int(offset / pd.Timedelta(milliseconds=1))
        cursor = lo
        while cursor <= hi:
            # A half-open window KLINE_LIMIT bars long holds at most KLINE_LIMIT bar open times.
            window_end = min(hi, cursor + KLINE_LIMIT * bar_ms - 1)
            params = {
                "category": category, "symbol": symbol, "interval": interval,
                "start": cursor, "end": window_end, "limit": KLINE_LIMIT,
            }  # fmt: skip
            parse = functools.partial(self._kline_page, lo_ms=cursor, hi_ms=window_end)
            page = self._call("/v5/market/kline", params, parse)
            if len(page):
                yield page
            cursor = window_end + 1

    @staticmethod
    def _kline_page(result: dict[str, Any], lo_ms: int, hi_ms: int) -> pd.DataFrame:
        """[startTime, open, high, low, close, volume, turnover] strings, newest first -> ascending frame."""
        rows = _result_list(result)
        if len(rows) > KLINE_LIMIT:
            raise MalformedResponse(f"page holds {len(rows)} bars, more than the limit {KLINE_LIMIT}")
        try:
            arr = np.array(rows, dtype="float64") if rows else np.empty((0, 7))
        except (ValueError, TypeError) as exc:
            raise MalformedResponse(f"kline rows are malformed: {exc}") from exc
        if arr.ndim != 2 or arr.shape[1] != 7:
            raise MalformedResponse(f"kline rows must have 7 fields, got shape {arr.shape}")
        if not np.isfinite(arr).all():
            raise MalformedResponse("kline rows hold non-finite numbers")
        stamps = arr[:, 0].astype("int64")
        if len(stamps) and (stamps.min() < lo_ms or stamps.max() > hi_ms):
            raise MalformedResponse(f"kline page has bars outside the requested window [{lo_ms}, {hi_ms}]")
        if len(np.unique(stamps)) != len(stamps):
            raise MalformedResponse("kline page repeats a startTime")
        order = np.argsort(stamps)
        frame = pd.DataFrame(arr[order, 1:], columns=list(KLINE_COLUMNS), index=_utc_index(stamps[order]))
        return frame

    def klines(self, category: str, symbol: str, interval: str, start: Any, end: Any = None) -> pd.DataFrame:
        """The whole [start, end] range as one ascending, de-duplicated DataFrame."""
        return _ascending_unique(list(self.iter_klines(category, symbol, interval, start, end)), KLINE_COLUMNS)

    def funding_history(self, category: str, symbol: str, start: Any, end: Any = None) -> pd.DataFrame:
        """Funding rates in [start, end], column ``funding_rate``.

        /v5/market/funding/history returns at most 200 records, newest first, up to ``endTime``
        (passing startTime alone is an error), so pages walk backwards by endTime
        (https://bybit-exchange.github.io/docs/v5/market/history-fund-rate).
        """
        category = self._derivative(category)
        lo, hi = _range_ms(start, end)
        frames: list[pd.DataFrame] = []
        cursor = hi
        while cursor >= lo:
            params = {
                "category": category, "symbol": symbol, "startTime": lo, "endTime": cursor, "limit": FUNDING_LIMIT,
            }  # fmt: skip

            def parse(result: dict[str, Any], b: int = cursor) -> pd.DataFrame:
                rows = _result_list(result)
                if len(rows) > FUNDING_LIMIT:
                    raise MalformedResponse(f"page holds {len(rows)} records, more than {FUNDING_LIMIT}")
                return _records_frame(rows, "fundingRateTimestamp", {"fundingRate": "funding_rate"}, lo, b)

            page = self._call("/v5/market/funding/history", params, parse)
            if page.empty:
                break
            frames.append(page)
            if len(page) < FUNDING_LIMIT:
                break
            cursor = to_ms(page.index[0]) - 1
        return _ascending_unique(frames, ("funding_rate",))

    def open_interest(
        self, category: str, symbol: str, interval_time: str, start: Any, end: Any = None
    ) -> pd.DataFrame:
        """Open interest in [start, end] sampled every ``interval_time``, column ``open_interest``.

        Follows ``nextPageCursor`` until it is empty (https://bybit-exchange.github.io/docs/v5/market/open-interest).
        """
        category = self._derivative(category)
        if interval_time not in OPEN_INTEREST_INTERVALS:
            raise InputError("interval_time", f"{interval_time!r} is not one of {', '.join(OPEN_INTEREST_INTERVALS)}")
        lo, hi = _range_ms(start, end)
        frames: list[pd.DataFrame] = []
        cursor = ""
        seen: set[str] = set()
        while True:
            params = {
                "category": category, "symbol": symbol, "intervalTime": interval_time,
                "startTime": lo, "endTime": hi, "limit": OPEN_INTEREST_LIMIT,
            }  # fmt: skip
            if cursor:
                params["cursor"] = cursor

            def parse(result: dict[str, Any]) -> tuple[pd.DataFrame, str]:
                rows = _result_list(result)
                if len(rows) > OPEN_INTEREST_LIMIT:
                    raise MalformedResponse(f"page holds {len(rows)} records, more than {OPEN_INTEREST_LIMIT}")
                page = _records_frame(rows, "timestamp", {"openInterest": "open_interest"}, lo, hi)
                return page, str(result.get("nextPageCursor") or "")

            page, cursor = self._call("/v5/market/open-interest", params, parse)
            frames.append(page)
            if not cursor or page.empty:
                break
            if cursor in seen:
                raise DataError(f"Bybit open-interest pagination repeats cursor {cursor!r}")
            seen.add(cursor)
        return _ascending_unique(frames, ("open_interest",))

    def orderbook(self, category: str, symbol: str, limit: int = 50) -> OrderBook:
        """Snapshot of ``limit`` levels a side (max 200 spot, 500 linear/inverse)."""
        category = check_category(category)
        depth = ORDERBOOK_MAX_DEPTH[category]
        if not 1 <= int(limit) <= depth:
            raise InputError("limit", f"must be in [1, {depth}] for {category}, got {limit}")

        def parse(result: dict[str, Any]) -> OrderBook:
            try:
                bids = tuple((float(p), float(q)) for p, q in result["b"])
                asks = tuple((float(p), float(q)) for p, q in result["a"])
                ts = pd.Timestamp(int(result["ts"]), unit="ms", tz="UTC")
            except (KeyError, TypeError, ValueError) as exc:
                raise MalformedResponse(f"orderbook result is malformed: {exc}") from exc
            bid_prices, ask_prices = np.array([p for p, _ in bids]), np.array([p for p, _ in asks])
            if (np.diff(bid_prices) >= 0).any() or (np.diff(ask_prices) <= 0).any():
                raise MalformedResponse("orderbook levels are not sorted best-first")
            if bids and asks and bids[0][0] >= asks[0][0]:
                raise MalformedResponse(f"orderbook is crossed (bid {bids[0][0]} >= ask {asks[0][0]})")
            return OrderBook(str(result.get("s", symbol)), bids, asks, ts, bool(result.get("synthetic", False)))

        return self._call("/v5/market/orderbook", {"category": category, "symbol": symbol, "limit": int(limit)}, parse)

    def tickers(self, category: str, symbol: str | None = None) -> list[dict[str, Any]]:
        """Latest 24h ticker rows as Bybit sends them (strings)."""
        params: dict[str, Any] = {"category": check_category(category)}
        if symbol:
            params["symbol"] = symbol

        def parse(result: dict[str, Any]) -> list[dict[str, Any]]:
            rows = _result_list(result)
            if not all(isinstance(row, dict) and "symbol" in row and "lastPrice" in row for row in rows):
                raise MalformedResponse("ticker rows lack symbol/lastPrice")
            return rows

        return self._call("/v5/market/tickers", params, parse)

    def instruments(self, category: str, symbol: str | None = None) -> list[Instrument]:
        """Instrument rules, following ``nextPageCursor`` (limit 1000 a page)."""
        category = check_category(category)
        out: list[Instrument] = []
        cursor = ""
        while True:
            params: dict[str, Any] = {"category": category, "limit": INSTRUMENTS_LIMIT}
            if symbol:
                params["symbol"] = symbol
            if cursor:
                params["cursor"] = cursor

            def parse(result: dict[str, Any]) -> tuple[list[Instrument], str]:
                rows = [Instrument.from_bybit(category, row) for row in _result_list(result)]
                return rows, str(result.get("nextPageCursor") or "")

            rows, next_cursor = self._call("/v5/market/instruments-info", params, parse)
            out.extend(rows)
            if not next_cursor or not rows or next_cursor == cursor:
                return out
            cursor = next_cursor

    @staticmethod
    def _derivative(category: str) -> str:
        if check_category(category) not in DERIVATIVES:
            raise InputError("category", f"funding and open interest exist only for {' and '.join(DERIVATIVES)}")
        return category
