"""The agent loop: per cycle, observe every symbol, decide, apply risk, place, and journal it all.

One cycle (:meth:`Agent.run_cycle`): reconcile orders a crash or a timeout left unanswered (looked up
at the broker, never placed again), gather market data per symbol, fill in the outcome of earlier
decisions whose horizon has passed (an LLM reasoner reads the latest in its prompt; the members'
losses feed the ensemble's online weights, :mod:`fmtrade.agent.learning`), mark the paper
account and settle its funding, check the daily-loss kill switch (flatten and stop), then per symbol
observe -> decide -> risk -> place; record equity. A symbol that fails is journaled in ``errors``
and the others go on. :meth:`Agent.run` repeats cycles ``every`` interval of the *source's* clock,
so against a replay server running faster than real time many cycles pass in seconds. A run id given
again resumes its journal: the cycle numbers go on.
"""

from __future__ import annotations

import dataclasses
import secrets
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, Protocol

import pandas as pd

from fmtrade.agent.broker import Account, Broker, OrderIntent, OrderState
from fmtrade.agent.events import EventFeed
from fmtrade.agent.journal import Journal
from fmtrade.agent.learning import Fold, WeightLearner
from fmtrade.agent.llm import LLMReasoner
from fmtrade.agent.members import MemberForecast, member_forecasts
from fmtrade.agent.observe import DocumentForecasts, Forecasts, MarketData, as_utc, gather_live, summarise_forecast
from fmtrade.agent.paper import PaperBroker
from fmtrade.agent.risk import Clamp, RiskManager
from fmtrade.agent.schemas import ForecastSummary, Observation, Reasoner
from fmtrade.config import Settings
from fmtrade.data.bybit import BybitClient, Instrument
from fmtrade.data.intervals import bars_per_year, interval_offset
from fmtrade.errors import InputError

POLL_S = 1.0  # longest real-time sleep between two reads of the source's clock


class MarketSource(Protocol):
    """Where observations come from, and whose clock the loop keeps."""

    category: str
    interval: str

    def gather(self, symbol: str, at: pd.Timestamp | None) -> MarketData: ...

    def clock(self) -> pd.Timestamp: ...

    def instruments(self, symbols: Sequence[str]) -> dict[str, Instrument]: ...


@dataclass
class LiveSource:
    """Bybit or the replay server through the public client (:func:`gather_live`)."""

    client: BybitClient
    category: str
    interval: str
    lookback: int = 512

    def gather(self, symbol: str, at: pd.Timestamp | None) -> MarketData:
        return gather_live(self.client, symbol, self.category, self.interval, lookback=self.lookback, at=at)

    def clock(self) -> pd.Timestamp:
        return self.client.server_time()

    def instruments(self, symbols: Sequence[str]) -> dict[str, Instrument]:
        out = {}
        for symbol in symbols:
            found = self.client.instruments(self.category, symbol)
            if not found:
                raise InputError("symbols", f"{symbol} is not listed in {self.category} at {self.client.base_url}")
            out[symbol] = found[0]
        return out


def new_run_id() -> str:
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


@dataclass
class CycleResult:
    """What one cycle did, in the shape ``fmtrade agent run --json`` prints."""

    run_id: str
    cycle: int
    at: pd.Timestamp
    decisions: list[dict[str, Any]] = field(default_factory=list)
    orders: list[dict[str, Any]] = field(default_factory=list)
    fills: list[dict[str, Any]] = field(default_factory=list)
    clamps: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    portfolio: dict[str, Any] = field(default_factory=dict)
    stopped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "cycle": self.cycle, "at": self.at.isoformat(), "decisions": self.decisions,
            "orders": self.orders, "fills": self.fills, "clamps": self.clamps, "errors": self.errors,
            "portfolio": self.portfolio, "stopped": self.stopped,
        }  # fmt: skip


def portfolio_document(account: Account) -> dict[str, Any]:
    gross = account.gross_exposure
    return {
        "equity": account.equity,
        "cash": account.cash,
        "gross_exposure": gross / account.equity if account.equity > 0 else 0.0,
        "positions": {s: p.model_dump() | {"notional": p.notional} for s, p in sorted(account.positions.items())},
    }


class Agent:
    """Observe -> decide -> risk -> execute -> journal, one cycle at a time (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        broker: Broker,
        reasoner: Reasoner,
        journal: Journal,
        source: MarketSource,
        *,
        symbols: Sequence[str],
        run_id: str | None = None,
        forecasts: Forecasts | None = None,
        events: EventFeed | None = None,
        risk: RiskManager | None = None,
        learner: WeightLearner | None = None,
    ) -> None:
        if not symbols:
            raise InputError("symbols", "at least one symbol is needed")
        self.settings, self.broker, self.reasoner, self.journal, self.source = (
            settings, broker, reasoner, journal, source,
        )  # fmt: skip
        self.symbols = list(dict.fromkeys(symbols))
        self.forecasts, self.events = forecasts, events or EventFeed()
        self.run_id = run_id or new_run_id()
        self.risk = risk or RiskManager(
            settings.agent, source.instruments(self.symbols), bars_per_year(source.interval)
        )
        config = {
            "symbols": self.symbols, "category": source.category, "interval": source.interval,
            "broker": broker.name, "reasoner": reasoner.name,
        }  # fmt: skip
        self.next_cycle = journal.start_run(self.run_id, config)
        self.learner = learner if learner is not None else WeightLearner.for_forecasts(settings, forecasts)
        if isinstance(reasoner, LLMReasoner) and reasoner.outcomes is None:  # recent results go into the prompt
            reasoner.outcomes = partial(journal.outcome_lines, self.run_id)
        self._funded_until: dict[str, pd.Timestamp] = {}
        for cycle in journal.unfinished_cycles(self.run_id):  # a crash mid-cycle: settle what it sent
            self._reconcile(cycle, None)
            journal.finish_cycle(self.run_id, cycle, "interrupted", "resumed after the process stopped mid-cycle")

    # One cycle -----------------------------------------------------------------------------
    def run_cycle(self, at: datetime | pd.Timestamp | None = None) -> CycleResult:
        """One full cycle at ``at`` (default: now on the source's clock)."""
        stopped = self.journal.stopped(self.run_id)
        if stopped is not None:
            raise InputError("run_id", f"run {self.run_id} was stopped ({stopped}); start a new run")
        explicit = as_utc(at) if at is not None else None
        clock = self.source.clock()
        if explicit is not None and explicit > clock:  # the source would hand out still-open bars as closed
            raise InputError("at", f"{explicit.isoformat()} is after the market's clock {clock.isoformat()}")
        moment = explicit if explicit is not None else clock
        cycle, self.next_cycle = self.next_cycle, self.next_cycle + 1
        self.journal.start_cycle(self.run_id, cycle, moment.to_pydatetime())
        result = CycleResult(self.run_id, cycle, moment)
        self._reconcile(cycle, result)
        market = self._gather(cycle, explicit, result)
        self._outcomes(market)  # before deciding: an LLM reads the latest results in its prompt
        account = self._mark(market)
        kill = self.risk.kill_switch(account, self._day_start(moment, account))
        if kill is not None:
            self._stop(cycle, kill, account, result)
        else:
            for data in market.values():
                self._guarded(cycle, data.symbol, "decide", result, partial(self._trade, cycle, data, result))
        self._close_cycle(cycle, moment, result)
        return result

    def _gather(self, cycle: int, at: pd.Timestamp | None, result: CycleResult) -> dict[str, MarketData]:
        market: dict[str, MarketData] = {}
        for symbol in self.symbols:
            self._guarded(cycle, symbol, "observe", result, partial(self._fetch, market, symbol, at))
        return market

    def _fetch(self, market: dict[str, MarketData], symbol: str, at: pd.Timestamp | None) -> None:
        market[symbol] = self.source.gather(symbol, at)

    def _guarded(self, cycle: int, symbol: str, stage: str, result: CycleResult, step: Callable[[], None]) -> None:
        """Run one symbol's step; a failure is journaled and reported, and the cycle goes on."""
        try:
            step()
        except Exception as exc:  # one symbol's failure must not stop the others
            message = f"{type(exc).__name__}: {exc}"
            self.journal.record_error(self.run_id, cycle, symbol, stage, message)
            result.errors.append({"symbol": symbol, "stage": stage, "error": message})

    def _mark(self, market: dict[str, MarketData]) -> Account:
        """Value the paper account at this cycle's prices and settle funding due since the last cycle."""
        if isinstance(self.broker, PaperBroker):
            for symbol, data in market.items():
                book = data.book
                closes = data.closes()
                if book is not None and book.ts <= data.at and book.bids and book.asks:
                    self.broker.mark(symbol, book.mid)
                elif not closes.empty:
                    self.broker.mark(symbol, float(closes.iloc[-1]))
                self._settle_funding(self.broker, data)
        return self.broker.account()

    def _settle_funding(self, broker: PaperBroker, data: MarketData) -> None:
        since = self._funded_until.get(data.symbol)
        self._funded_until[data.symbol] = data.at
        if since is None or data.funding is None or data.funding.empty:
            return
        times = pd.DatetimeIndex(data.funding.index)
        due = data.funding["funding_rate"][(times > since) & (times <= data.at)]
        for rate in due.to_numpy(dtype=float):
            broker.charge_funding(data.symbol, float(rate))

    def _day_start(self, moment: pd.Timestamp, account: Account) -> float:
        known = self.journal.day_start_equity(self.run_id, moment.strftime("%Y-%m-%d"))
        return known if known is not None else account.equity

    def _trade(self, cycle: int, data: MarketData, result: CycleResult) -> None:
        forecast, members = None, None
        if self.forecasts is not None:
            try:
                forecast, members = self._forecast(self.forecasts, data)
            except Exception as exc:  # decide without it, and say so
                message = f"{type(exc).__name__}: {exc}"
                self.journal.record_error(self.run_id, cycle, data.symbol, "forecast", message)
                result.errors.append({"symbol": data.symbol, "stage": "forecast", "error": message})
        account = self.broker.account()
        observation = data.observe(forecast=forecast, account=account, events=self.events.events)
        record = self.reasoner.decide(observation)
        plan = self.risk.plan(self.run_id, cycle, record, observation, account)
        self.journal.record_decision(self.run_id, cycle, observation, record, plan.target_qty, plan.clamps, members)
        result.clamps += [_clamp_dict(c) for c in plan.clamps]
        result.decisions.append(
            {
                "symbol": data.symbol,
                "action": record.decision.action,
                "confidence": record.decision.conviction,
                "size": plan.target_qty,
                "order_qty": plan.intent.qty if plan.intent is not None else 0.0,
                "price": observation.book.mid if observation.book is not None else observation.last_price,
                "reasoner": record.reasoner,
                "fallback_reason": record.fallback_reason,
                "reasoning": record.decision.reasons + [c.reason for c in plan.clamps],
            }
        )
        if plan.intent is not None:
            self._place(cycle, plan.intent, result)

    @staticmethod
    def _forecast(forecasts: Forecasts, data: MarketData) -> tuple[ForecastSummary, dict[str, MemberForecast] | None]:
        """The ensemble's summary, and each member's forecast when the forecaster shows them (to be scored
        once the outcome is known)."""
        closes = data.closes()
        if not isinstance(forecasts, DocumentForecasts):
            return forecasts(data.symbol, closes, data.interval), None
        doc = forecasts.document(data.symbol, closes, data.interval)
        return summarise_forecast(doc), member_forecasts(doc, closes.index[-1], data.interval)

    # Orders --------------------------------------------------------------------------------
    def _place(self, cycle: int, intent: OrderIntent, result: CycleResult) -> None:
        """Journal the intent, then send it; an id journaled before is looked up, never sent twice."""
        order = None
        if not self.journal.order_intent(self.run_id, cycle, intent):
            order = self.broker.lookup(intent.order_link_id, intent.symbol)
        if order is None:
            try:
                order = self.broker.place(intent)
            except Exception as exc:  # a timeout may still have placed it: ask before giving up
                message = f"{type(exc).__name__}: {exc}"
                self.journal.record_error(self.run_id, cycle, intent.symbol, "order", message)
                result.errors.append({"symbol": intent.symbol, "stage": "order", "error": message})
                order = self.broker.lookup(intent.order_link_id, intent.symbol)
                if order is None:
                    return  # stays Pending: the next cycle (or a restart) reconciles it
        self._record_order(cycle, order, result)

    def _record_order(self, cycle: int, order: OrderState, result: CycleResult | None) -> None:
        state = self.broker.dump() if isinstance(self.broker, PaperBroker) else None
        self.journal.order_result(self.run_id, cycle, order, self.broker.name, state)
        if result is None:
            return
        result.orders.append(order.model_dump())
        if order.filled_qty > 0 and order.avg_price is not None:
            result.fills.append(
                {"symbol": order.symbol, "side": order.side, "qty": order.filled_qty, "price": order.avg_price,
                 "fee": order.fee, "order_link_id": order.order_link_id}
            )  # fmt: skip

    def _reconcile(self, cycle: int, result: CycleResult | None) -> None:
        """Orders journaled but unanswered: take the broker's record, or mark them never sent."""
        for pending in self.journal.pending_orders(self.run_id):
            order = self.broker.lookup(pending["order_link_id"], pending["symbol"])
            if order is not None:
                self._record_order(int(pending["cycle"]), order, result)
            else:
                reason = f"not at the {self.broker.name} broker when reconciled in cycle {cycle}: never placed"
                self.journal.mark_order(pending["order_link_id"], "Cancelled", reason)

    def _stop(self, cycle: int, kill: Clamp, account: Account, result: CycleResult) -> None:
        self.journal.record_clamps(self.run_id, cycle, [kill])
        result.clamps.append(_clamp_dict(kill))
        result.stopped = kill.reason
        category = self.source.category
        for intent in self.risk.flatten(self.run_id, cycle, category, account):
            self._guarded(cycle, intent.symbol, "flatten", result, partial(self._place, cycle, intent, result))

    # Outcomes and bookkeeping ----------------------------------------------------------------
    def _outcomes(self, market: dict[str, MarketData]) -> None:
        """Realised return, forecast error and PnL of earlier decisions whose horizon has passed."""
        for row in self.journal.open_decisions(self.run_id):
            data = market.get(row["symbol"])
            observation: Observation = row["observation"]
            if data is None:
                continue
            horizon = observation.forecast.horizon if observation.forecast is not None else 1
            bar = interval_offset(data.interval)
            closes = data.closes()
            end = _horizon_end(closes, pd.Timestamp(observation.time), bar, horizon)
            if end is None or end > data.at:
                continue
            known = closes[closes.index + bar <= end]
            if known.empty or known.index[-1] + bar < end:
                continue
            realised = float(known.iloc[-1]) / observation.last_price - 1.0
            error = realised - observation.forecast.expected_return if observation.forecast is not None else None
            target = row["target_qty"]
            pnl = None if target is None else target * (float(known.iloc[-1]) - observation.last_price)
            fold = self._fold(row["cycle"], row["symbol"], closes)
            self.journal.record_outcome(
                self.run_id, row["cycle"], row["symbol"], end.to_pydatetime(), realised, error, pnl,
                fold.losses if fold else None, fold.weights if fold else None,
            )  # fmt: skip
            if fold is not None and self.learner is not None:  # after the journal: a crash never folds twice
                self.learner.save()

    def _fold(self, cycle: int, symbol: str, closes: pd.Series) -> Fold | None:
        """Fold the members' losses on the realised closes into the online weights (see ``learning``)."""
        if self.learner is None:
            return None
        return self.learner.fold(symbol, self.journal.member_forecasts(self.run_id, cycle, symbol), closes)

    def _close_cycle(self, cycle: int, moment: pd.Timestamp, result: CycleResult) -> None:
        account = self.broker.account()
        self.journal.record_equity(self.run_id, cycle, moment.to_pydatetime(), account)
        if isinstance(self.broker, PaperBroker):
            self.journal.save_state(self.run_id, self.broker.name, self.broker.dump())
        result.portfolio = portfolio_document(account)
        status = "stopped" if result.stopped else "done"
        self.journal.finish_cycle(self.run_id, cycle, status, result.stopped)

    # Many cycles ---------------------------------------------------------------------------
    def run(
        self,
        every: pd.Timedelta | None = None,
        stop: threading.Event | None = None,
        max_cycles: int | None = None,
        on_cycle: Callable[[CycleResult], None] | None = None,
    ) -> list[CycleResult]:
        """One cycle, or one every ``every`` of the source's clock until ``stop`` is set, the kill
        switch fires or ``max_cycles`` ran. ``stop`` is checked between cycles: a cycle always completes."""
        stop = stop or threading.Event()
        results: list[CycleResult] = []
        while True:
            result = self.run_cycle()
            results.append(result)
            if on_cycle is not None:
                on_cycle(result)
            done = every is None or result.stopped is not None or stop.is_set()
            if done or (max_cycles is not None and len(results) >= max_cycles):
                return results
            if not self._wait_until(result.at + every, stop):
                return results

    def _wait_until(self, target: pd.Timestamp, stop: threading.Event) -> bool:
        """Sleep until the source's clock reaches ``target``; False when ``stop`` was set meanwhile."""
        while not stop.is_set():
            remaining = (target - self.source.clock()).total_seconds()
            if remaining <= 0:
                return True
            stop.wait(min(max(remaining, 0.01), POLL_S))
        return False


def _horizon_end(
    closes: pd.Series, decided: pd.Timestamp, bar: pd.DateOffset | pd.Timedelta, horizon: int
) -> pd.Timestamp | None:
    """When the ``horizon``-th bar after the last one closed at the decision time closes (the decision
    time itself when it fell on a bar's close); None when ``closes`` do not reach back to that bar."""
    before = closes.index[closes.index + bar <= decided]
    return None if before.empty else before[-1] + bar * (horizon + 1)


def _clamp_dict(clamp: Clamp) -> dict[str, Any]:
    return dataclasses.asdict(clamp)
