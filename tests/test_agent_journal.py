"""The journal: WAL on, atomic records, resumable runs, and orders journaled before they are sent."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

import pytest

from fmtrade.agent.broker import Account, OrderIntent, OrderState, Position, order_link_id
from fmtrade.agent.journal import Journal
from fmtrade.agent.risk import Clamp
from fmtrade.agent.schemas import Decision, DecisionRecord, Indicators, Observation
from fmtrade.config import load_settings

AT = datetime(2024, 3, 1, 12, tzinfo=UTC)


def _obs() -> Observation:
    return Observation(symbol="AAAUSDT", category="linear", time=AT, last_price=10.0, indicators=Indicators(rsi_14=55))


def _record() -> DecisionRecord:
    return DecisionRecord(
        symbol="AAAUSDT",
        decision=Decision(action="long", conviction=0.4, reasons=["indicators.rsi_14 55"]),
        reasoner="llm->rules",
        fallback_reason="malformed JSON",
        raw_answer="{not json",
        prompt_tokens=120,
        completion_tokens=7,
        cost=0.001,
    )


def test_default_path_wal_and_resume_continues_cycle_numbers(isolated_home) -> None:
    path = load_settings().agent_journal()
    assert path == isolated_home / "agent" / "journal.sqlite"
    with Journal(path) as journal:
        assert journal.journal_mode() == "wal"
        assert journal.start_run("r1", {"symbols": ["AAAUSDT"]}) == 1
        for cycle in (1, 2):
            journal.start_cycle("r1", cycle, AT)
            journal.finish_cycle("r1", cycle)
        journal.start_cycle("r1", 3, AT)  # crashed mid-cycle
    with Journal(path) as journal:
        assert journal.start_run("r1", {"symbols": ["AAAUSDT"]}) == 4
        assert journal.unfinished_cycles("r1") == [3]
        assert journal.start_run("other", {}) == 1
        assert [r["run_id"] for r in journal.rows("runs")] == ["r1", "other"]


def test_decision_observation_and_clamps_are_recorded_together(tmp_path) -> None:
    with Journal(tmp_path / "j.sqlite") as journal:
        journal.start_run("r", {})
        journal.start_cycle("r", 1, AT)
        clamp = Clamp("AAAUSDT", "max_leverage", 9.0, 5.0, "too big")
        journal.record_decision("r", 1, _obs(), _record(), 5.0, [clamp])
        (decision,) = journal.rows("decisions", "r")
        assert decision["raw_answer"] == "{not json" and decision["fallback_reason"] == "malformed JSON"
        assert (decision["prompt_tokens"], decision["completion_tokens"], decision["target_qty"]) == (120, 7, 5.0)
        assert journal.rows("clamps", "r")[0]["reason"] == "too big"
        assert Observation.model_validate_json(journal.rows("observations", "r")[0]["observation"]) == _obs()
        with pytest.raises(RuntimeError), journal.transaction() as db:  # a failed write leaves nothing behind
            db.execute("INSERT INTO errors VALUES ('r', 1, 'AAAUSDT', 'x', 'y')")
            raise RuntimeError("crash mid-transaction")
        assert journal.rows("errors", "r") == []


def test_orders_are_unique_by_client_id_and_pending_until_answered(tmp_path) -> None:
    path = tmp_path / "j.sqlite"
    intent = OrderIntent(
        symbol="AAAUSDT", category="linear", side="Buy", qty=2.0, order_link_id=order_link_id("r", 1, "AAAUSDT")
    )
    with Journal(path) as journal:
        journal.start_run("r", {})
        assert journal.order_intent("r", 1, intent) is True
        assert journal.order_intent("r", 1, intent) is False  # the same client id is never journaled twice
        assert [o["status"] for o in journal.pending_orders("r")] == ["Pending"]
    with Journal(path) as journal:  # after a restart the pending order is still there to look up
        (pending,) = journal.pending_orders("r")
        assert pending["order_link_id"] == intent.order_link_id
        filled = OrderState(
            order_link_id=intent.order_link_id, order_id="x-1", symbol="AAAUSDT", side="Buy", qty=2.0,
            status="Filled", filled_qty=2.0, avg_price=10.5, fee=0.02,
        )  # fmt: skip
        journal.order_result("r", 1, filled, broker="paper", state='{"cash": 1.0}')
        assert journal.pending_orders("r") == []
        assert journal.rows("fills", "r")[0]["price"] == 10.5
        assert journal.broker_state("r", "paper") == '{"cash": 1.0}'
    with sqlite3.connect(path) as raw, pytest.raises(sqlite3.IntegrityError):
        raw.execute(
            "INSERT INTO orders VALUES (?, 'r', 2, 'AAAUSDT', 'linear', 'Buy', 1, 0, 'New', NULL, NULL, 'a', 'a')",
            (intent.order_link_id,),
        )


def test_equity_day_start_and_outcomes(tmp_path) -> None:
    with Journal(tmp_path / "j.sqlite") as journal:
        journal.start_run("r", {})
        position = Position(symbol="AAAUSDT", qty=1.0, avg_price=10.0, mark_price=11.0)
        journal.record_equity("r", 1, AT, Account(equity=1000.0, cash=989.0, positions={"AAAUSDT": position}))
        journal.record_equity("r", 2, AT.replace(hour=13), Account(equity=990.0, cash=990.0))
        assert journal.day_start_equity("r", "2024-03-01") == 1000.0
        assert journal.day_start_equity("r", "2024-03-02") is None
        journal.start_cycle("r", 1, AT)
        journal.record_decision("r", 1, _obs(), _record(), 1.0, [])
        assert [d["cycle"] for d in journal.open_decisions("r")] == [1]
        journal.record_outcome("r", 1, "AAAUSDT", AT.replace(hour=13), 0.02, 0.01, 0.2)
        assert journal.open_decisions("r") == []
        (line,) = journal.outcome_lines("r", "AAAUSDT")
        assert line.startswith("cycle 1: long (conviction 0.40); by 2024-03-01T13:00Z the return was +0.0200")
        assert "forecast error +0.0100" in line and "pnl of the target position +0.20" in line
        assert journal.outcome_lines("r", "BBBUSDT") == []
