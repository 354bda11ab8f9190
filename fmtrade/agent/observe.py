"""Observe: one :class:`~fmtrade.agent.schemas.Observation` per symbol and decision time.

:func:`observe` is a pure function over data known at the decision time ``at``: bars that closed
by then (a bar still open at ``at`` is dropped, so a partial bar from the exchange or the replay
server never leaks its future close), the book, funding and open interest stamped at or before
``at``, and events published strictly before it. Whatever comes later cannot change the
observation; the agent backtest relies on that. The gatherers only fetch: :func:`gather_live` from
Bybit (or the replay server), :func:`gather_store` from the local store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from fmtrade.agent.broker import Account
from fmtrade.agent.events import visible
from fmtrade.agent.indicators import compute_indicators
from fmtrade.agent.schemas import BookState, Derivatives, Event, ForecastSummary, Observation, PortfolioState
from fmtrade.client import forecast_remote
from fmtrade.config import Settings
from fmtrade.data.bybit import DERIVATIVES, BybitClient, OrderBook
from fmtrade.data.intervals import check_category, interval_offset
from fmtrade.data.store import Store
from fmtrade.ensemble import ENSEMBLE_NAME
from fmtrade.errors import InputError
from fmtrade.forecasting import forecast_symbol, load_models
from fmtrade.live_state import LiveState
from fmtrade.models.base import Forecast, Forecaster
from fmtrade.models.registry import active_specs, select_specs

OPEN_INTEREST_INTERVAL = "1h"
FUNDING_LOOKBACK = pd.Timedelta(days=3)  # funding settles every 8 h at most: the last rate is within this
OI_LOOKBACK = pd.Timedelta(hours=26)  # 24 h change plus slack for a missing sample


def as_utc(at: datetime | pd.Timestamp) -> pd.Timestamp:
    stamp = pd.Timestamp(at)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def closed_bars(bars: pd.DataFrame, at: pd.Timestamp, interval: str) -> pd.DataFrame:
    """The bars whose close time (open + interval) is at or before ``at``."""
    closes_at = bars.index + interval_offset(interval)
    return bars.loc[closes_at <= at]


def book_state(book: OrderBook) -> BookState:
    mid = book.mid
    return BookState(mid=mid, spread_bps=book.spread / mid * 1e4, imbalance=book.imbalance, synthetic=book.synthetic)


def _known(frame: pd.DataFrame | None, column: str, at: pd.Timestamp) -> pd.Series:
    if frame is None or frame.empty:
        return pd.Series(dtype="float64")
    series = frame[column].dropna()
    return series.loc[series.index <= at]


def derivatives_state(
    funding: pd.DataFrame | None, open_interest: pd.DataFrame | None, at: pd.Timestamp
) -> Derivatives | None:
    """Last settled funding rate and the 24 h relative change of open interest, as known at ``at``."""
    rates = _known(funding, "funding_rate", at)
    oi = _known(open_interest, "open_interest", at)
    rate = float(rates.iloc[-1]) if len(rates) else None
    change = None
    if len(oi):
        earlier = oi.loc[oi.index <= oi.index[-1] - pd.Timedelta(hours=24)]
        if len(earlier) and earlier.iloc[-1] > 0:
            change = float(oi.iloc[-1] / earlier.iloc[-1] - 1.0)
    if rate is None and change is None:
        return None
    return Derivatives(funding_rate=rate, open_interest_change_24h=change)


def portfolio_state(account: Account, symbol: str) -> PortfolioState:
    position = account.positions.get(symbol)
    exposure = account.gross_exposure / account.equity if account.equity > 0 else 0.0
    return PortfolioState(
        equity=account.equity,
        cash=account.cash,
        position_qty=position.qty if position else 0.0,
        position_notional=position.notional if position else 0.0,
        gross_exposure=exposure,
    )


def observe(
    symbol: str,
    *,
    bars: pd.DataFrame,
    at: datetime | pd.Timestamp,
    category: str,
    interval: str = "60",
    book: OrderBook | None = None,
    funding: pd.DataFrame | None = None,
    open_interest: pd.DataFrame | None = None,
    forecast: ForecastSummary | None = None,
    account: Account | None = None,
    events: Sequence[Event] = (),
) -> Observation:
    """The observation of ``symbol`` at ``at`` from data known by then (see the module docstring).

    ``bars`` are OHLCV indexed by UTC open time; ``funding`` and ``open_interest`` the frames the
    Bybit client and the store return; ``forecast`` must itself come from bars before ``at``.
    """
    at = as_utc(at)
    closed = closed_bars(bars, at, interval)
    if closed.empty:
        raise InputError(
            "bars",
            f"no {symbol} bar of interval {interval} closed in the {len(bars)} bars before {at.isoformat()} "
            "(a replay server over older data needs --now near its last bar)",
        )
    known_book = book if book is not None and book.ts <= at and book.bids and book.asks else None
    return Observation(
        symbol=symbol,
        category=check_category(category),
        time=at.to_pydatetime(),
        last_price=float(closed["close"].iloc[-1]),
        indicators=compute_indicators(closed, interval),
        book=book_state(known_book) if known_book is not None else None,
        derivatives=derivatives_state(funding, open_interest, at),
        forecast=forecast,
        portfolio=portfolio_state(account, symbol) if account is not None else None,
        events=visible(events, at.to_pydatetime(), symbol),
    )


@dataclass(frozen=True)
class MarketData:
    """What the gatherers fetched for one symbol at one decision time (before any filtering)."""

    symbol: str
    category: str
    interval: str
    at: pd.Timestamp
    bars: pd.DataFrame
    book: OrderBook | None = None
    funding: pd.DataFrame | None = None
    open_interest: pd.DataFrame | None = None

    def observe(
        self, *, forecast: ForecastSummary | None = None, account: Account | None = None, events: Sequence[Event] = ()
    ) -> Observation:
        return observe(
            self.symbol,
            bars=self.bars,
            at=self.at,
            category=self.category,
            interval=self.interval,
            book=self.book,
            funding=self.funding,
            open_interest=self.open_interest,
            forecast=forecast,
            account=account,
            events=events,
        )

    def closes(self) -> pd.Series:
        """Closes of the bars closed by ``at``: the context a forecast for this decision may use."""
        return closed_bars(self.bars, self.at, self.interval)["close"]


def _history_start(at: pd.Timestamp, interval: str, lookback: int) -> pd.Timestamp:
    if lookback < 2:
        raise InputError("lookback", f"must be at least 2 bars, got {lookback}")
    return at - interval_offset(interval) * (lookback + 1)


def gather_live(
    client: BybitClient,
    symbol: str,
    category: str,
    interval: str,
    *,
    lookback: int = 512,
    at: datetime | pd.Timestamp | None = None,
) -> MarketData:
    """Fetch bars, book, funding and open interest from Bybit or the replay server.

    Without ``at`` the decision time is the server's clock read after the book, so the snapshot
    is known at it; with ``at`` in the past the (current) book is left out by :func:`observe`.
    """
    category = check_category(category)
    book = client.orderbook(category, symbol)
    moment = as_utc(at) if at is not None else client.server_time()
    bars = client.klines(category, symbol, interval, _history_start(moment, interval, lookback), moment)
    funding = open_interest = None
    if category in DERIVATIVES:
        funding = client.funding_history(category, symbol, moment - FUNDING_LOOKBACK, moment)
        open_interest = client.open_interest(category, symbol, OPEN_INTEREST_INTERVAL, moment - OI_LOOKBACK, moment)
    return MarketData(symbol, category, interval, moment, bars, book, funding, open_interest)


def gather_store(
    store: Store, symbol: str, category: str, interval: str, at: datetime | pd.Timestamp, *, lookback: int = 512
) -> MarketData:
    """Read the same inputs from the local store (no book: the store keeps none)."""
    category = check_category(category)
    moment = as_utc(at)
    bars = store.read(symbol, interval, _history_start(moment, interval, lookback), moment, category)
    funding = open_interest = None
    if category in DERIVATIVES:
        funding = store.read_funding(symbol, category, moment - FUNDING_LOOKBACK, moment)
        open_interest = store.read_open_interest(symbol, OPEN_INTEREST_INTERVAL, category, moment - OI_LOOKBACK, moment)
    return MarketData(symbol, category, interval, moment, bars, None, funding, open_interest)


# Forecasts ---------------------------------------------------------------------------------
def summarise_forecast(doc: dict[str, Any]) -> ForecastSummary:
    """The ensemble's horizon view from a forecast document (``fmtrade forecast --json``, the served
    ``/v1/forecast``): returns relative to the last close, VaR/ES 95% by :class:`Forecast`'s helpers."""
    try:
        combined = doc[ENSEMBLE_NAME]
        levels = sorted(combined["quantiles"], key=float)
        last = float(doc["last_value"])
        forecast = Forecast(
            model=ENSEMBLE_NAME,
            mean=np.array([combined["mean"]], dtype=np.float64),
            quantiles=np.array([np.column_stack([combined["quantiles"][q] for q in levels])], dtype=np.float64),
            quantile_levels=tuple(float(q) for q in levels),
            last_values=np.array([last]),
        )
        disagreement = float(combined["disagreement"][-1]) / last
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise InputError("forecast", f"not a forecast document ({type(exc).__name__}: {exc})") from None
    q10, q50, q90 = (float(forecast.quantile(level)[0, -1] / last - 1.0) for level in (0.1, 0.5, 0.9))
    return ForecastSummary(
        horizon=forecast.horizon,
        expected_return=float(forecast.expected_return()[0]),
        q10=q10,
        q50=q50,
        q90=q90,
        disagreement=disagreement,
        var_95=float(forecast.value_at_risk(0.95)[0]),
        es_95=float(forecast.expected_shortfall(0.95)[0]),
        members=sorted(doc.get("models", {})),
    )


class Forecasts(Protocol):
    """Forecast the bars after ``closes`` (closed bars only) and summarise the ensemble's view."""

    def __call__(self, symbol: str, closes: pd.Series, interval: str) -> ForecastSummary: ...


@runtime_checkable
class DocumentForecasts(Forecasts, Protocol):
    """Forecasts that also hand over the whole forecast document, each member's quantiles included,
    so the loop can journal them and score the members once the outcome is known
    (:mod:`fmtrade.agent.learning`)."""

    def document(self, symbol: str, closes: pd.Series, interval: str) -> dict[str, Any]: ...


LEVELS = (0.05, 0.1, 0.5, 0.9, 0.95)  # 5/95% anchor the VaR/ES tail; 10/50/90% are what reasoners read


@dataclass
class InProcessForecasts:
    """The registry's models in this process, loaded once on first use (``--serve-url`` absent)."""

    settings: Settings
    models: Sequence[str] | None = None
    horizon: int = 24
    context: int = 512
    state: LiveState | None = None  # live calibration (`fmtrade calibrate`); never used for bars before its asof
    _loaded: tuple[dict[str, Forecaster], dict[str, float], dict[str, str]] | None = field(default=None, repr=False)

    def __call__(self, symbol: str, closes: pd.Series, interval: str) -> ForecastSummary:
        return summarise_forecast(self.document(symbol, closes, interval))

    def document(self, symbol: str, closes: pd.Series, interval: str) -> dict[str, Any]:
        if self._loaded is None:
            specs = select_specs(active_specs(self.settings), self.models)
            loaded, failed = load_models(specs, self.settings)
            self._loaded = loaded, {s.name: s.weight for s in specs}, failed
        loaded, weights, failed = self._loaded
        context = min(self.context, len(closes))
        return forecast_symbol(
            symbol, closes, loaded, weights, interval, self.horizon, LEVELS, context, failed, state=self.state
        )


@dataclass(frozen=True)
class ApiForecasts:
    """The served API (``--serve-url``), sent the closed bars as an explicit context, so the
    forecast uses exactly the history the observation does, whatever the service's store holds."""

    url: str
    models: Sequence[str] | None = None
    horizon: int = 24
    context: int = 512
    token: str | None = None

    def __call__(self, symbol: str, closes: pd.Series, interval: str) -> ForecastSummary:
        return summarise_forecast(self.document(symbol, closes, interval))

    def document(self, symbol: str, closes: pd.Series, interval: str) -> dict[str, Any]:
        window = closes.iloc[-self.context :].to_numpy(dtype=np.float64)
        return forecast_remote(
            self.url, context=window.tolist(), interval=interval, horizon=self.horizon, quantiles=LEVELS,
            models=self.models, context_length=len(window), token=self.token,
        )  # fmt: skip


def make_forecasts(settings: Settings, serve_url: str | None = None, **options: Any) -> Forecasts:
    """The served API when ``serve_url`` is given, else the models in this process (with the live
    calibration state when one was learned: ``fmtrade calibrate``)."""
    if serve_url:
        return ApiForecasts(serve_url, **options)
    return InProcessForecasts(settings, state=LiveState.load_if_present(settings.live_state_path()), **options)
