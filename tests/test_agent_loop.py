"""The agent loop against the replay server over real HTTP: full cycles, failures, restarts, the kill switch."""

from __future__ import annotations

import threading
import time

import pandas as pd
import pytest

from fmtrade.agent.bybit import BybitBroker
from fmtrade.agent.journal import Journal
from fmtrade.agent.llm import LLMReasoner
from fmtrade.agent.loop import Agent, LiveSource
from fmtrade.agent.paper import PaperBroker
from fmtrade.agent.reasoners import RulesReasoner
from fmtrade.agent.schemas import Decision, DecisionRecord, Observation
from fmtrade.backtest.simulator import Costs
from fmtrade.config import AgentSettings, load_settings
from fmtrade.data.bybit import BybitClient
from fmtrade.data.replay import Faults, ReplayServer
from fmtrade.errors import InputError
from tests.fake_openai import FakeOpenAI

FAKE_KEY = "sk-fake-loop-9Jd2"

SYMBOLS = ["AAAUSDT", "BBBUSDT"]
NOW = pd.Timestamp("2022-02-10T00:00:00Z")  # well inside the session store's 2500 hourly bars
KEY, SECRET = "fake-key-loop-4T", "fake-secret-loop-Zr8QmN"


class Always:
    """A reasoner with a fixed answer (the loop's own tests need a decision that surely trades)."""

    name = "always"

    def __init__(self, action: str = "long", conviction: float = 1.0) -> None:
        self.decision = Decision(action=action, conviction=conviction, reasons=["test: fixed decision"])

    def decide(self, observation: Observation) -> DecisionRecord:
        return DecisionRecord(symbol=observation.symbol, decision=self.decision, reasoner=self.name)


class LostAnswer(Exception):
    pass


class Crash(BaseException):
    """Stands for the process dying: nothing in the loop catches it."""


class AnswerLost(PaperBroker):
    """Fault injection on a real paper broker: the order is placed, then its answer never arrives."""

    def __init__(self, error: type[BaseException] | None) -> None:
        super().__init__(Costs(), 100_000.0)
        self.error, self.placed = error, 0

    def place(self, intent):
        self.placed += 1
        order = super().place(intent)
        if self.error is not None:
            raise self.error("the answer to order/create was lost")
        return order


@pytest.fixture(scope="module")
def replay(market_store):
    with ReplayServer(market_store, now=NOW, accounts={KEY: SECRET}, initial_balance=100_000.0) as server:
        yield server


@pytest.fixture
def source(replay):
    replay.speed, replay.now, replay.faults = 0, NOW, None  # speed first: stopping a fast clock freezes it
    with BybitClient(replay.url, rate_limiter=None) as client:
        yield LiveSource(client, "linear", "60")


def _agent(source, broker, reasoner=None, run_id="run-1", **limits):
    settings = load_settings(overrides={"agent": limits} if limits else None)
    journal = Journal(settings.agent_journal())
    return Agent(settings, broker, reasoner or RulesReasoner(), journal, source, symbols=SYMBOLS, run_id=run_id)


def test_a_full_cycle_decides_with_reasons_and_fills_on_paper(source) -> None:
    settings = load_settings()
    broker = PaperBroker(Costs(), settings.agent.initial_equity)
    result = _agent(source, broker, Always("long", 0.5)).run_cycle()
    assert [d["symbol"] for d in result.decisions] == SYMBOLS and not result.errors
    assert all(d["reasoning"] and d["action"] == "long" and d["size"] > 0 for d in result.decisions)
    assert [f["symbol"] for f in result.fills] == SYMBOLS
    for fill in result.fills:
        assert fill["fee"] == pytest.approx(fill["qty"] * fill["price"] * Costs().rate)
    positions = result.portfolio["positions"]
    assert {s: p["qty"] for s, p in positions.items()} == {d["symbol"]: d["size"] for d in result.decisions}
    journal = Journal(settings.agent_journal())
    assert [o["status"] for o in journal.rows("orders", "run-1")] == ["Filled", "Filled"]
    assert len(journal.rows("observations", "run-1")) == 2 and journal.rows("equity", "run-1")
    assert journal.broker_state("run-1", "paper") == broker.dump()


def test_rules_decide_every_symbol_and_cite_the_observation(source) -> None:
    result = _agent(source, PaperBroker(Costs(), 100_000.0)).run_cycle()
    assert [d["symbol"] for d in result.decisions] == SYMBOLS
    for decision in result.decisions:
        assert decision["reasoner"] == "rules" and decision["action"] in {"long", "short", "hold"}
        assert any("score" in reason for reason in decision["reasoning"])
    assert result.at == NOW


def test_one_symbols_failure_is_journaled_and_the_others_go_on(source) -> None:
    class Broken(LiveSource):
        def gather(self, symbol, at):
            if symbol == "BBBUSDT":
                raise ConnectionError("feed down")
            return super().gather(symbol, at)

    broken = Broken(source.client, "linear", "60")
    agent = _agent(broken, PaperBroker(Costs(), 100_000.0), Always())
    result = agent.run_cycle()
    assert [d["symbol"] for d in result.decisions] == ["AAAUSDT"] and len(result.fills) == 1
    assert result.errors == [{"symbol": "BBBUSDT", "stage": "observe", "error": "ConnectionError: feed down"}]
    assert agent.journal.rows("errors", agent.run_id)[0]["message"] == "ConnectionError: feed down"


def test_a_lost_order_answer_ends_with_exactly_one_order(source) -> None:
    broker = AnswerLost(LostAnswer)
    result = _agent(source, broker, Always()).run_cycle()
    assert broker.placed == 2 and len(broker.state.orders) == 2  # one order per symbol, none twice
    assert [e["stage"] for e in result.errors] == ["order", "order"]
    assert len(result.fills) == 2  # found by lookup after the error
    assert [o["status"] for o in Journal(load_settings().agent_journal()).rows("orders")] == ["Filled", "Filled"]


def test_bybit_timeout_on_order_create_ends_with_one_order(source, replay, monkeypatch) -> None:
    monkeypatch.setenv("FMTRADE_AGENT__API_KEY", KEY)
    monkeypatch.setenv("FMTRADE_AGENT__API_SECRET", SECRET)
    replay.faults = Faults(schedule=["delay"], delay_s=2.5, paths=["/v5/order/create"])
    with BybitBroker(load_settings(), base_url=replay.url, timeout_s=1.0) as broker:
        agent = _agent(source, broker, Always("long", 0.3), run_id="bybit-run")
        result = agent.run_cycle()
    assert [o["status"] for o in result.orders] == ["Filled", "Filled"]
    link_ids = [r.params.get("orderLinkId") for r in replay.requests if r.path == "/v5/order/create"]
    assert sorted(set(link_ids)) == sorted(o["order_link_id"] for o in result.orders)
    journal = Journal(load_settings().agent_journal())
    assert len(journal.rows("orders", "bybit-run")) == 2 and len(journal.rows("fills", "bybit-run")) == 2
    assert KEY not in journal.path.read_bytes().decode("latin-1") and SECRET not in str(result.to_dict())


def test_a_restart_after_a_crash_looks_the_order_up_instead_of_placing_it_again(source) -> None:
    exchange = AnswerLost(Crash)  # survives the crash, like an exchange does
    with pytest.raises(Crash):
        _agent(source, exchange, Always()).run_cycle()
    exchange.error = None
    assert len(exchange.state.orders) == 1  # AAAUSDT placed, then the process "died"
    journal = Journal(load_settings().agent_journal())
    assert [o["status"] for o in journal.rows("orders", "run-1")] == ["Pending"]

    resumed = _agent(source, exchange, Always())
    assert resumed.next_cycle == 2
    assert [o["status"] for o in journal.rows("orders", "run-1")] == ["Filled"]  # reconciled by lookup
    assert journal.rows("cycles", "run-1")[0]["status"] == "interrupted"
    result = resumed.run_cycle(NOW)
    assert result.cycle == 2
    link_ids = [o["order_link_id"] for o in journal.rows("orders", "run-1")]
    assert len(link_ids) == len(set(link_ids)) == len(exchange.state.orders)
    assert all(order.status == "Filled" for order in exchange.state.orders.values())


def test_the_kill_switch_flattens_and_stops_the_run(source, replay) -> None:
    broker = PaperBroker(Costs(), 100_000.0)
    agent = _agent(source, broker, Always(), daily_loss_limit=0.02)
    first = agent.run_cycle()
    assert first.stopped is None and broker.account().positions
    broker.state.cash -= 0.05 * broker.account().equity  # a 5% loss within the day
    replay.now = NOW + pd.Timedelta(hours=1)
    with pytest.raises(InputError, match="after the market's clock"):
        agent.run_cycle(NOW + pd.Timedelta(hours=2))
    second = agent.run_cycle()
    assert second.stopped is not None and "flatten" in second.stopped
    assert [c["rule"] for c in second.clamps] == ["daily_loss"] and not second.decisions
    assert not broker.account().positions and second.portfolio["positions"] == {}
    assert all(o["status"] == "Filled" for o in second.orders) and len(second.orders) == 2
    with pytest.raises(InputError, match="stopped"):
        agent.run_cycle()


def test_every_runs_on_the_servers_fast_clock(source, replay) -> None:
    replay.now, replay.speed = NOW, 7200.0  # two hours a second
    agent = _agent(source, PaperBroker(Costs(), 100_000.0))
    started = time.monotonic()
    results = agent.run(every=pd.Timedelta(hours=1), max_cycles=3)
    assert time.monotonic() - started < 30
    assert [r.cycle for r in results] == [1, 2, 3]
    gaps = [(b.at - a.at) for a, b in zip(results, results[1:], strict=False)]
    assert all(gap >= pd.Timedelta(hours=1) for gap in gaps)
    stop = threading.Event()
    stop.set()  # Ctrl-C: the cycle under way completes, then the run ends
    assert len(agent.run(every=pd.Timedelta(hours=1), stop=stop)) == 1


def test_outcomes_are_filled_in_once_the_horizon_has_passed(source, replay, market_store) -> None:
    agent = _agent(source, PaperBroker(Costs(), 100_000.0), Always())
    agent.run_cycle()
    assert agent.journal.rows("outcomes", agent.run_id) == []  # the horizon (one bar, no forecast) is ahead
    replay.now = NOW + pd.Timedelta(hours=2)
    agent.run_cycle()
    outcomes = {o["symbol"]: o for o in agent.journal.rows("outcomes", agent.run_id) if o["cycle"] == 1}
    targets = {d["symbol"]: d["target_qty"] for d in agent.journal.rows("decisions", agent.run_id) if d["cycle"] == 1}
    for symbol in SYMBOLS:
        bars = market_store.read(symbol, "60", category="linear")
        before, after = bars["close"][NOW - pd.Timedelta(hours=1)], bars["close"][NOW]
        assert outcomes[symbol]["realised_return"] == pytest.approx(after / before - 1)
        assert outcomes[symbol]["pnl"] == pytest.approx(targets[symbol] * (after - before))
        assert outcomes[symbol]["forecast_error"] is None


def test_the_llm_reasoner_decides_in_the_loop_and_reads_its_recent_outcomes(source, replay) -> None:
    with FakeOpenAI(["valid"]) as fake:
        settings = AgentSettings(llm_base_url=fake.url, llm_model="fake-model", llm_api_key=FAKE_KEY)
        agent = _agent(source, PaperBroker(Costs(), 100_000.0), LLMReasoner(settings))
        first = agent.run_cycle()
        replay.now = NOW + pd.Timedelta(hours=2)
        agent.run_cycle()
        prompts = [r["body"]["messages"][1]["content"] for r in fake.requests]
    assert [d["reasoner"] for d in first.decisions] == ["llm", "llm"] and len(first.fills) == 2
    assert len(prompts) == 4 and all("Recent outcomes" not in p for p in prompts[:2])
    for symbol, prompt in zip(SYMBOLS, prompts[2:], strict=True):
        assert f"Recent outcomes of your decisions on {symbol}:\n- cycle 1: long (conviction 0.80)" in prompt
    decisions = agent.journal.rows("decisions", agent.run_id)
    assert all(d["prompt_tokens"] > 0 and d["raw_answer"] for d in decisions)
    assert FAKE_KEY.encode() not in agent.journal.path.read_bytes()
