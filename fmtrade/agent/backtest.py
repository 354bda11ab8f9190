"""Backtest the agent itself: the live loop's observe -> decide -> risk -> paper path, walk-forward.

Per symbol, :func:`backtest_symbol` drives :class:`fmtrade.agent.loop.Agent` (the very class
``fmtrade agent run`` uses) through the backtest's rebalance points, each cycle at the point's open
time. Its market source (:class:`HistorySource`) hands the loop only what was known then: the bars
closed by the decision time, funding and open interest stamped by it; the forecasts are the
backtest engine's walk-forward ensemble at that point (recalibrated and weighted from outcomes
realised before it), summarised like a live forecast document. The paper broker fills at the last
close with the backtest's ``trade`` accounting, so the agent's row stands beside buy-and-hold and the
plain forecast-threshold strategy, which :func:`fmtrade.backtest.results.run_asset` trades on the
same points, data and costs. LLM answers go through a cassette: recorded once, replayed after, so a
re-run is bit-identical. No Ray here: ``jobs/agent_backtest.py`` runs one task per symbol.
"""

from __future__ import annotations

import html
import json
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from upath import UPath

from fmtrade.agent.cassette import Cassette
from fmtrade.agent.events import EventFeed
from fmtrade.agent.journal import Journal
from fmtrade.agent.loop import Agent
from fmtrade.agent.observe import FUNDING_LOOKBACK, OI_LOOKBACK, OPEN_INTEREST_INTERVAL, MarketData, summarise_forecast
from fmtrade.agent.paper import PaperBroker
from fmtrade.agent.reasoners import make_reasoner
from fmtrade.agent.risk import RiskManager
from fmtrade.agent.schemas import Event, ForecastSummary
from fmtrade.backtest.config import BacktestConfig
from fmtrade.backtest.engine import walk_forward
from fmtrade.backtest.market import Market
from fmtrade.backtest.outputs import clean, write_run
from fmtrade.backtest.report import render_html
from fmtrade.backtest.results import AssetResult, BacktestRun, book_frame, run_asset, trades_frame, trading_scores
from fmtrade.backtest.simulator import Costs, Simulation
from fmtrade.backtest.windows import Windows
from fmtrade.config import Settings
from fmtrade.data.bybit import DERIVATIVES, Instrument
from fmtrade.data.intervals import bars_per_year, interval_offset
from fmtrade.data.store import Store
from fmtrade.ensemble import ENSEMBLE_NAME, EnsembleResult
from fmtrade.forecasting import forecast_document
from fmtrade.io import write_parquet_atomic, write_text_atomic
from fmtrade.models.base import Forecast
from fmtrade.walkforward import WalkForward

AGENT = "agent"  # the agent's model name in every output
THRESHOLD = "threshold"  # the plain forecast-threshold strategy on the same ensemble
OBSERVE_BARS = 256  # bars handed to each observation: indicators need 50, outcomes a horizon


@dataclass(frozen=True)
class History:
    """One symbol's stored inputs for a whole run; :meth:`at` cuts them at a decision time."""

    symbol: str
    category: str
    interval: str
    bars: pd.DataFrame  # OHLCV by UTC open time
    funding: pd.DataFrame | None = None
    open_interest: pd.DataFrame | None = None
    lookback: int = OBSERVE_BARS

    def at(self, moment: pd.Timestamp) -> MarketData:
        """What was known at ``moment``: bars closed by then, funding and open interest stamped by then."""
        closed = self.bars.loc[self.bars.index + interval_offset(self.interval) <= moment].iloc[-self.lookback :]
        return MarketData(
            self.symbol, self.category, self.interval, moment, closed, None,
            _until(self.funding, moment - FUNDING_LOOKBACK, moment),
            _until(self.open_interest, moment - OI_LOOKBACK, moment),
        )  # fmt: skip


def _until(frame: pd.DataFrame | None, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame | None:
    if frame is None:
        return None
    return frame.loc[(frame.index >= start) & (frame.index <= end)]


def load_history(store: Store, symbol: str, config: BacktestConfig, lookback: int = OBSERVE_BARS) -> History:
    """The bars from ``lookback`` before ``config.start`` to ``config.end``, and the derivatives' series."""
    bar = interval_offset(config.interval)
    lo, hi = config.start - bar * (lookback + 1), config.end - pd.Timedelta(1, "ns")
    bars = store.read(symbol, config.interval, lo, hi, config.category)
    funding = open_interest = None
    if config.category in DERIVATIVES:
        funding = store.read_funding(symbol, config.category, lo, hi)
        open_interest = store.read_open_interest(symbol, OPEN_INTEREST_INTERVAL, config.category, lo, hi)
    return History(symbol, config.category, config.interval, bars, funding, open_interest, lookback)


@dataclass
class HistorySource:
    """The agent loop's market source over :class:`History` (every cycle is given its time)."""

    history: History
    category: str = field(init=False)
    interval: str = field(init=False)

    def __post_init__(self) -> None:
        self.category, self.interval = self.history.category, self.history.interval

    def gather(self, symbol: str, at: pd.Timestamp | None) -> MarketData:
        if at is None:
            raise ValueError("an agent backtest gives every cycle its decision time")
        return self.history.at(at)

    def clock(self) -> pd.Timestamp:
        """The history's end (its last bar's close): no decision may be later."""
        return self.history.bars.index[-1] + interval_offset(self.interval)

    def instruments(self, symbols: Sequence[str]) -> dict[str, Instrument]:
        return {}  # the store keeps no instrument rules: the paper broker's min_trade_notional applies


@dataclass(frozen=True)
class PointForecasts:
    """The walk-forward ensemble's summary at each decision time (the loop's ``Forecasts``)."""

    by_time: Mapping[pd.Timestamp, ForecastSummary]

    def __call__(self, symbol: str, closes: pd.Series, interval: str) -> ForecastSummary:
        moment = closes.index[-1] + interval_offset(interval)
        if moment not in self.by_time:
            raise KeyError(f"no walk-forward forecast of {symbol} at {moment.isoformat()}")
        return self.by_time[moment]


def summaries(windows: Windows, walked: Mapping[str, Forecast]) -> dict[pd.Timestamp, ForecastSummary]:
    """Each rebalance point's ensemble row as the live forecast document summarises it."""
    members = {name: fc for name, fc in walked.items() if name != ENSEMBLE_NAME}
    result = EnsembleResult(ensemble=walked[ENSEMBLE_NAME], members=members, weights={}, failed={})
    return {
        stamp: summarise_forecast(forecast_document(result, row, symbol=windows.symbol, timestamps=None, elapsed_ms=0))
        for row, stamp in enumerate(windows.timestamps)
    }


@dataclass
class AgentAsset:
    """One symbol's agent backtest: the rows beside the benchmarks, its decisions, new cassette entries."""

    asset: AssetResult
    decisions: list[dict[str, Any]]
    cassette: str | None = None  # the task's cassette file after the run (JSONL)


@dataclass
class _Book:
    """The paper account after each cycle, to mark it on every bar in between."""

    points: list[int] = field(default_factory=list)
    cash: list[float] = field(default_factory=list)
    units: list[float] = field(default_factory=list)
    fees: list[float] = field(default_factory=list)
    funding: list[float] = field(default_factory=list)

    def snap(self, point: int, broker: PaperBroker, symbol: str) -> None:
        state = broker.state
        self.points.append(point)
        self.cash.append(state.cash)
        self.units.append(state.qty.get(symbol, 0.0))
        self.fees.append(state.fees_paid)
        self.funding.append(state.funding_paid)

    def simulation(self, market: Market, windows: Windows, trades: pd.DataFrame, initial: float) -> Simulation:
        """The agent's per-bar book in the simulator's columns (marked at the backtest's filled closes)."""
        close = market.filled_close()
        first, stop = windows.first, windows.stop
        n = stop - first
        bars = {k: np.zeros(n) for k in ("units", "cost", "funding", "cash")}
        bars["target"] = np.full(n, np.nan)
        bars["cash"][:] = initial
        fees = np.diff(np.concatenate([[0.0], self.fees]))
        paid = np.diff(np.concatenate([[0.0], self.funding]))
        for k, point in enumerate(self.points):
            row = point - first
            bars["units"][row:] = self.units[k]
            bars["cash"][row:] = self.cash[k]
            bars["cost"][row], bars["funding"][row] = fees[k], paid[k]
        price = close[first:stop]
        equity = bars["cash"] + bars["units"] * price
        for k, point in enumerate(self.points):
            bars["target"][point - first] = self.units[k] * close[point - 1] / equity[point - first]
        pnl = bars["units"] * (price - close[first - 1 : stop - 1])
        frame = pd.DataFrame(
            {
                "timestamp": market.timestamps[first:stop], "target": bars["target"], "units": bars["units"],
                "price": price, "position": bars["units"] * price / equity, "pnl": pnl, "cost": bars["cost"],
                "funding": bars["funding"], "equity": equity,
            }
        )  # fmt: skip
        return Simulation(frame, trades, initial)


def _relabel(asset: AssetResult) -> AssetResult:
    """The ensemble traded by the threshold rule is the ``threshold`` row."""
    names = {ENSEMBLE_NAME: THRESHOLD}
    for frame in (asset.positions, asset.trades, asset.forecasts):
        if "model" in frame:
            frame["model"] = frame["model"].replace(names)
    for row in asset.metrics:
        row["model"] = names.get(str(row["model"]), row["model"])
    return asset


def _trade_rows(symbol: str, at: pd.Timestamp, fills: list[dict[str, Any]]) -> list[tuple]:
    rows = []
    for fill in fills:
        units = fill["qty"] if fill["side"] == "Buy" else -fill["qty"]
        rows.append((at, "buy" if units > 0 else "sell", units, fill["price"], abs(units) * fill["price"], fill["fee"]))
    return rows


def backtest_symbol(
    settings: Settings,
    history: History,
    market: Market,
    windows: Windows,
    config: BacktestConfig,
    forecasts: Mapping[str, Forecast] | None = None,
    walk: WalkForward | None = None,
    *,
    events: Sequence[Event] = (),
    cassette: str | None = None,
) -> AgentAsset:
    """Run the agent over ``windows`` on one symbol and trade the benchmarks on the same points.

    ``forecasts`` are the members' raw walk-forward forecasts (None: the agent decides without one,
    and there is no threshold row); ``cassette`` the LLM cassette's JSONL text so far."""
    walked = walk_forward(market, windows, forecasts, config, walk) if forecasts and walk else {}
    ensemble = {ENSEMBLE_NAME: walked[ENSEMBLE_NAME]} if ENSEMBLE_NAME in walked else {}
    benchmarks = _relabel(run_asset(market, windows, ensemble, config))
    source = HistorySource(history)
    book, decisions, trades = _Book(), [], []
    with tempfile.TemporaryDirectory(prefix="fmtrade-agent-backtest-") as tmp:
        tape = None
        if settings.agent.reasoner == "llm":
            tape_path = Path(tmp) / "cassette.jsonl"
            if cassette:
                tape_path.write_text(cassette, encoding="utf-8")
            tape = Cassette(tape_path)
        reasoner = make_reasoner(settings, tape)
        broker = PaperBroker(Costs.from_config(config), config.initial_equity)
        risk = RiskManager(settings.agent, {}, bars_per_year(config.interval))
        points = PointForecasts(summaries(windows, walked)) if walked else None
        try:
            with Journal(Path(tmp) / "journal.sqlite") as journal:
                agent = Agent(
                    settings, broker, reasoner, journal, source, symbols=[history.symbol],
                    run_id=f"backtest-{history.symbol}", forecasts=points, events=EventFeed(events), risk=risk,
                )  # fmt: skip
                for point, stamp in zip(windows.points, windows.timestamps, strict=True):
                    result = agent.run_cycle(stamp)
                    book.snap(int(point), broker, history.symbol)
                    trades += _trade_rows(history.symbol, stamp, result.fills)
                    decisions += _decision_rows(result.to_dict())
                    if result.stopped:
                        break
        finally:
            if hasattr(reasoner, "close"):
                reasoner.close()
        recorded = tape.path.read_text(encoding="utf-8") if tape is not None and tape.path.exists() else None
    columns = ["timestamp", "side", "units", "price", "notional", "cost"]
    sim = book.simulation(market, windows, pd.DataFrame(trades, columns=columns), config.initial_equity)
    row = {"symbol": history.symbol, "model": AGENT, **trading_scores(sim, config.interval)}
    agent_trades = trades_frame(sim, history.symbol, AGENT)
    all_trades = [t for t in (agent_trades, benchmarks.trades) if not t.empty] or [benchmarks.trades]
    asset = AssetResult(
        history.symbol,
        pd.concat([book_frame(sim, history.symbol, AGENT), benchmarks.positions], ignore_index=True),
        pd.concat(all_trades, ignore_index=True),
        benchmarks.forecasts,
        [row, *benchmarks.metrics],
    )
    return AgentAsset(asset, decisions, recorded)


def _decision_rows(cycle: dict[str, Any]) -> list[dict[str, Any]]:
    """The cycle's decisions, each with its time, cycle, clamps and errors (the audit trail's rows)."""
    rows = []
    for decision in cycle["decisions"]:
        symbol = decision["symbol"]
        rows.append(
            {
                "time": cycle["at"], "cycle": cycle["cycle"], **decision,
                "clamps": [c["rule"] for c in cycle["clamps"] if c["symbol"] == symbol],
                "errors": [e["error"] for e in cycle["errors"] if e["symbol"] == symbol],
                "stopped": cycle["stopped"],
            }
        )  # fmt: skip
    return rows


# Outputs -----------------------------------------------------------------------------------
@dataclass
class AgentBacktestRun:
    """Every symbol's agent backtest: the run the backtest outputs are written from, and the decisions."""

    run: BacktestRun
    decisions: list[dict[str, Any]]
    settings: dict[str, Any]  # the agent section (no secret) and what the run used

    @classmethod
    def gather(cls, config: BacktestConfig, assets: Sequence[AgentAsset], settings: dict[str, Any]) -> AgentBacktestRun:
        return cls(BacktestRun(config, [a.asset for a in assets]), [d for a in assets for d in a.decisions], settings)

    @property
    def summary(self) -> list[dict]:
        return self.run.summary


def merge_cassettes(path: str | Path, recorded: Sequence[str | None]) -> Cassette:
    """Add the tasks' new exchanges to the cassette at ``path`` (tasks record into copies, in parallel)."""
    tape = Cassette(path)
    for text in recorded:
        if text:
            tape.merge(text)
    return tape


def decisions_html(decisions: Sequence[dict[str, Any]]) -> str:
    head = "<tr><th>time</th><th>symbol</th><th>action</th><th>confidence</th><th>size</th><th>reasons</th></tr>"
    rows = "".join(
        f"<tr><td>{html.escape(str(d['time']))}</td><td>{html.escape(d['symbol'])}</td>"
        f"<td>{html.escape(d['action'])}</td><td>{d['confidence']:.3f}</td><td>{d['size']:.6g}</td>"
        f"<td style='text-align:left'>{'<br>'.join(html.escape(r) for r in d['reasoning'])}</td></tr>"
        for d in decisions
    )
    return f"<h2>Agent decisions and their reasons</h2><table>{head}{rows}</table>"


def write_agent_run(result: AgentBacktestRun, out: str | Path) -> UPath:
    """The backtest's run directory (summary.json, positions, trades, report.html...) plus the agent's
    decisions (decisions.jsonl, decisions.parquet), agent.json, and the decisions in the report."""
    directory = write_run(result.run, out)
    rows = clean(result.decisions)
    write_text_atomic(directory / "decisions.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    write_parquet_atomic(directory / "decisions.parquet", pa.Table.from_pylist(rows) if rows else pa.table({}))
    write_text_atomic(directory / "agent.json", json.dumps(clean(result.settings), indent=2, sort_keys=True) + "\n")
    images = {p.name: p.read_bytes() for p in sorted((directory / "plots").glob("*.png"))}
    page = render_html(result.run, images).replace("</body>", decisions_html(result.decisions) + "</body>")
    write_text_atomic(directory / "report.html", page)
    return directory
