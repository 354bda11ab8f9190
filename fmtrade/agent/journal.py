"""The agent's journal: one SQLite file (WAL) that records every cycle so a run can be audited and resumed.

Tables (docs/AGENT.md has the full schema): ``runs``, ``cycles``, ``observations`` (JSON),
``decisions`` (reasoner, raw answer, fallback reason, tokens, cost), ``clamps``, ``orders``
(``order_link_id`` UNIQUE, exchange id, status), ``fills``, ``equity`` (equity and positions per
cycle), ``errors`` (a symbol's failure in a cycle), ``outcomes`` (realised return and forecast
error once a decision's horizon has passed), ``member_forecasts`` (each ensemble member's quantiles
behind a decision), ``weight_updates`` (the members' losses folded into the online weights with an
outcome, and the weights after it) and ``broker_state`` (the paper broker's state).

Each write is one transaction. An order is journaled as ``Pending`` *before* it is sent, so after a
crash the resumed run finds it and asks the broker (``lookup``) instead of placing it again.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fmtrade.agent.broker import Account, OrderIntent, OrderState
from fmtrade.agent.members import MemberForecast
from fmtrade.agent.risk import Clamp
from fmtrade.agent.schemas import DecisionRecord, Observation

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, started_at TEXT NOT NULL, config TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cycles (
    run_id TEXT NOT NULL, cycle INTEGER NOT NULL, at TEXT NOT NULL, started_at TEXT NOT NULL,
    finished_at TEXT, status TEXT NOT NULL, note TEXT, PRIMARY KEY (run_id, cycle)
);
CREATE TABLE IF NOT EXISTS observations (
    run_id TEXT NOT NULL, cycle INTEGER NOT NULL, symbol TEXT NOT NULL, observation TEXT NOT NULL,
    PRIMARY KEY (run_id, cycle, symbol)
);
CREATE TABLE IF NOT EXISTS decisions (
    run_id TEXT NOT NULL, cycle INTEGER NOT NULL, symbol TEXT NOT NULL, action TEXT NOT NULL,
    conviction REAL NOT NULL, reasons TEXT NOT NULL, reasoner TEXT NOT NULL, fallback_reason TEXT,
    raw_answer TEXT, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, cost REAL NOT NULL,
    target_qty REAL, PRIMARY KEY (run_id, cycle, symbol)
);
CREATE TABLE IF NOT EXISTS clamps (
    run_id TEXT NOT NULL, cycle INTEGER NOT NULL, symbol TEXT NOT NULL, rule TEXT NOT NULL,
    before REAL NOT NULL, after REAL NOT NULL, reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS orders (
    order_link_id TEXT NOT NULL UNIQUE, run_id TEXT NOT NULL, cycle INTEGER NOT NULL, symbol TEXT NOT NULL,
    category TEXT NOT NULL, side TEXT NOT NULL, qty REAL NOT NULL, reduce_only INTEGER NOT NULL,
    status TEXT NOT NULL, exchange_id TEXT, reason TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS fills (
    order_link_id TEXT PRIMARY KEY, run_id TEXT NOT NULL, cycle INTEGER NOT NULL, symbol TEXT NOT NULL,
    side TEXT NOT NULL, qty REAL NOT NULL, price REAL NOT NULL, fee REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS equity (
    run_id TEXT NOT NULL, cycle INTEGER NOT NULL, at TEXT NOT NULL, equity REAL NOT NULL, cash REAL NOT NULL,
    gross_exposure REAL NOT NULL, positions TEXT NOT NULL, PRIMARY KEY (run_id, cycle)
);
CREATE TABLE IF NOT EXISTS errors (
    run_id TEXT NOT NULL, cycle INTEGER NOT NULL, symbol TEXT NOT NULL, stage TEXT NOT NULL, message TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outcomes (
    run_id TEXT NOT NULL, cycle INTEGER NOT NULL, symbol TEXT NOT NULL, horizon_end TEXT NOT NULL,
    realised_return REAL NOT NULL, forecast_error REAL, pnl REAL, PRIMARY KEY (run_id, cycle, symbol)
);
CREATE TABLE IF NOT EXISTS member_forecasts (
    run_id TEXT NOT NULL, cycle INTEGER NOT NULL, symbol TEXT NOT NULL, model TEXT NOT NULL, levels TEXT NOT NULL,
    steps TEXT NOT NULL, quantiles TEXT NOT NULL, PRIMARY KEY (run_id, cycle, symbol, model)
);
CREATE TABLE IF NOT EXISTS weight_updates (
    run_id TEXT NOT NULL, cycle INTEGER NOT NULL, symbol TEXT NOT NULL, losses TEXT NOT NULL, weights TEXT NOT NULL,
    PRIMARY KEY (run_id, cycle, symbol)
);
CREATE TABLE IF NOT EXISTS broker_state (run_id TEXT PRIMARY KEY, broker TEXT NOT NULL, state TEXT NOT NULL);
"""

TABLES = (
    "runs", "cycles", "observations", "decisions", "clamps", "orders", "fills", "equity", "errors", "outcomes",
    "member_forecasts", "weight_updates",
)  # fmt: skip


def _now() -> str:
    return datetime.now(UTC).isoformat()


class Journal:
    """Append-mostly record of runs; safe to open from several processes (WAL)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write: all of it lands, or none of it does."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def journal_mode(self) -> str:
        return str(self._db.execute("PRAGMA journal_mode").fetchone()[0])

    # Runs and cycles -------------------------------------------------------------------
    def start_run(self, run_id: str, config: dict[str, Any]) -> int:
        """Open (or resume) ``run_id``; returns the number the next cycle takes."""
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO runs VALUES (?, ?, ?)", (run_id, _now(), json.dumps(config, default=str)))
            row = db.execute("SELECT MAX(cycle) FROM cycles WHERE run_id = ?", (run_id,)).fetchone()
        return 1 if row[0] is None else int(row[0]) + 1

    def start_cycle(self, run_id: str, cycle: int, at: datetime) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO cycles VALUES (?, ?, ?, ?, NULL, 'running', NULL)", (run_id, cycle, at.isoformat(), _now())
            )

    def finish_cycle(self, run_id: str, cycle: int, status: str = "done", note: str | None = None) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE cycles SET finished_at = ?, status = ?, note = ? WHERE run_id = ? AND cycle = ?",
                (_now(), status, note, run_id, cycle),
            )

    def unfinished_cycles(self, run_id: str) -> list[int]:
        rows = self._db.execute(
            "SELECT cycle FROM cycles WHERE run_id = ? AND status = 'running' ORDER BY cycle", (run_id,)
        )
        return [int(r[0]) for r in rows]

    def stopped(self, run_id: str) -> str | None:
        """The note of the cycle that stopped the run (the kill switch), if one did."""
        row = self._db.execute(
            "SELECT note FROM cycles WHERE run_id = ? AND status = 'stopped' ORDER BY cycle LIMIT 1", (run_id,)
        ).fetchone()
        return None if row is None else str(row[0])

    # Per-symbol records ----------------------------------------------------------------
    def record_decision(
        self,
        run_id: str,
        cycle: int,
        observation: Observation,
        record: DecisionRecord,
        target_qty: float | None,
        clamps: list[Clamp],
        members: Mapping[str, MemberForecast] | None = None,
    ) -> None:
        """The observation, the decision, the risk clamps and the members' forecasts of one symbol, together."""
        d = record.decision
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO observations VALUES (?, ?, ?, ?)",
                (run_id, cycle, record.symbol, observation.model_dump_json()),
            )
            db.execute(
                "INSERT OR REPLACE INTO decisions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id, cycle, record.symbol, d.action, d.conviction, json.dumps(d.reasons), record.reasoner,
                    record.fallback_reason, record.raw_answer, record.prompt_tokens, record.completion_tokens,
                    record.cost, target_qty,
                ),
            )  # fmt: skip
            self._clamps(db, run_id, cycle, clamps)
            db.executemany(
                "INSERT OR REPLACE INTO member_forecasts VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        run_id, cycle, record.symbol, name, json.dumps(m.levels),
                        json.dumps([step.isoformat() for step in m.steps]), json.dumps(m.quantiles.tolist()),
                    )
                    for name, m in (members or {}).items()
                ],
            )  # fmt: skip

    def member_forecasts(self, run_id: str, cycle: int, symbol: str) -> dict[str, MemberForecast]:
        """The members' forecasts journaled with a decision (empty when it had none)."""
        rows = self._db.execute(
            "SELECT model, levels, steps, quantiles FROM member_forecasts WHERE run_id = ? AND cycle = ? AND symbol = ?"
            " ORDER BY rowid",
            (run_id, cycle, symbol),
        )
        return {
            name: MemberForecast(
                tuple(json.loads(levels)), tuple(pd.Timestamp(s) for s in json.loads(steps)),
                np.asarray(json.loads(quantiles), dtype=np.float64),
            )
            for name, levels, steps, quantiles in rows
        }  # fmt: skip

    def record_clamps(self, run_id: str, cycle: int, clamps: list[Clamp]) -> None:
        with self.transaction() as db:
            self._clamps(db, run_id, cycle, clamps)

    @staticmethod
    def _clamps(db: sqlite3.Connection, run_id: str, cycle: int, clamps: list[Clamp]) -> None:
        db.executemany(
            "INSERT INTO clamps VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(run_id, cycle, c.symbol, c.rule, c.before, c.after, c.reason) for c in clamps],
        )

    def record_error(self, run_id: str, cycle: int, symbol: str, stage: str, message: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO errors VALUES (?, ?, ?, ?, ?)", (run_id, cycle, symbol, stage, message[:2000]))

    # Orders ----------------------------------------------------------------------------
    def order_intent(self, run_id: str, cycle: int, intent: OrderIntent) -> bool:
        """Journal ``intent`` as Pending before it is sent; False when this client id is already journaled."""
        now = _now()
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO orders VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'Pending', NULL, NULL, ?, ?)",
                (
                    intent.order_link_id, run_id, cycle, intent.symbol, intent.category, intent.side, intent.qty,
                    int(intent.reduce_only), now, now,
                ),
            )  # fmt: skip
        return cursor.rowcount == 1

    def order_result(
        self, run_id: str, cycle: int, order: OrderState, broker: str | None = None, state: str | None = None
    ) -> None:
        """The broker's answer for a journaled order, its fill, and (paper) the broker state, atomically."""
        with self.transaction() as db:
            db.execute(
                "UPDATE orders SET status = ?, exchange_id = ?, reason = ?, updated_at = ? WHERE order_link_id = ?",
                (order.status, order.order_id, order.reason, _now(), order.order_link_id),
            )
            if order.filled_qty > 0 and order.avg_price is not None:
                db.execute(
                    "INSERT OR REPLACE INTO fills VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        order.order_link_id, run_id, cycle, order.symbol, order.side, order.filled_qty,
                        order.avg_price, order.fee,
                    ),
                )  # fmt: skip
            if broker is not None and state is not None:
                self._save_state(db, run_id, broker, state)

    def mark_order(self, order_link_id: str, status: str, reason: str) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE orders SET status = ?, reason = ?, updated_at = ? WHERE order_link_id = ?",
                (status, reason, _now(), order_link_id),
            )

    def pending_orders(self, run_id: str) -> list[dict[str, Any]]:
        """Orders journaled but never answered (sent right before a crash or a timeout)."""
        rows = self._db.execute("SELECT * FROM orders WHERE run_id = ? AND status = 'Pending'", (run_id,))
        return [dict(r) for r in rows]

    # Account and broker state ----------------------------------------------------------
    def record_equity(self, run_id: str, cycle: int, at: datetime, account: Account) -> None:
        positions = {s: p.model_dump() for s, p in account.positions.items()}
        gross = account.gross_exposure / account.equity if account.equity > 0 else 0.0
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO equity VALUES (?, ?, ?, ?, ?, ?, ?)",
                (run_id, cycle, at.isoformat(), account.equity, account.cash, gross, json.dumps(positions)),
            )

    def day_start_equity(self, run_id: str, day: str) -> float | None:
        """Equity at the first cycle of ``day`` (YYYY-MM-DD, UTC), the kill switch's reference."""
        row = self._db.execute(
            "SELECT equity FROM equity WHERE run_id = ? AND substr(at, 1, 10) = ? ORDER BY cycle LIMIT 1",
            (run_id, day),
        ).fetchone()
        return None if row is None else float(row[0])

    def save_state(self, run_id: str, broker: str, state: str) -> None:
        with self.transaction() as db:
            self._save_state(db, run_id, broker, state)

    @staticmethod
    def _save_state(db: sqlite3.Connection, run_id: str, broker: str, state: str) -> None:
        db.execute("INSERT OR REPLACE INTO broker_state VALUES (?, ?, ?)", (run_id, broker, state))

    def broker_state(self, run_id: str, broker: str) -> str | None:
        row = self._db.execute(
            "SELECT state FROM broker_state WHERE run_id = ? AND broker = ?", (run_id, broker)
        ).fetchone()
        return None if row is None else str(row[0])

    # Outcomes --------------------------------------------------------------------------
    def open_decisions(self, run_id: str) -> list[dict[str, Any]]:
        """Decisions whose outcome is not recorded yet (the loop fills each in once its horizon has passed)."""
        rows = self._db.execute(
            "SELECT o.cycle, o.symbol, o.observation, d.target_qty FROM observations o "
            "JOIN decisions d ON d.run_id = o.run_id AND d.cycle = o.cycle AND d.symbol = o.symbol "
            "LEFT JOIN outcomes u ON u.run_id = o.run_id AND u.cycle = o.cycle AND u.symbol = o.symbol "
            "WHERE o.run_id = ? AND u.cycle IS NULL ORDER BY o.cycle",
            (run_id,),
        )
        return [
            {"cycle": r[0], "symbol": r[1], "observation": Observation.model_validate_json(r[2]), "target_qty": r[3]}
            for r in rows
        ]

    def record_outcome(
        self,
        run_id: str,
        cycle: int,
        symbol: str,
        horizon_end: datetime,
        realised_return: float,
        forecast_error: float | None,
        pnl: float | None,
        losses: Mapping[str, float] | None = None,
        weights: Mapping[str, float] | None = None,
    ) -> None:
        """The outcome of a decision and, when its members' losses were folded into the online weights,
        the losses and the weights after the fold: together, so an outcome is folded at most once."""
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO outcomes VALUES (?, ?, ?, ?, ?, ?, ?)",
                (run_id, cycle, symbol, horizon_end.isoformat(), realised_return, forecast_error, pnl),
            )
            if losses is not None and weights is not None:
                db.execute(
                    "INSERT OR REPLACE INTO weight_updates VALUES (?, ?, ?, ?, ?)",
                    (run_id, cycle, symbol, json.dumps(dict(losses)), json.dumps(dict(weights))),
                )

    def outcome_lines(self, run_id: str, symbol: str, n: int = 5) -> list[str]:
        """The last ``n`` realised outcomes of ``symbol``'s decisions, oldest first, as lines for an LLM prompt."""
        rows = self._db.execute(
            "SELECT u.cycle, u.horizon_end, d.action, d.conviction, u.realised_return, u.forecast_error, u.pnl "
            "FROM outcomes u JOIN decisions d ON d.run_id = u.run_id AND d.cycle = u.cycle AND d.symbol = u.symbol "
            "WHERE u.run_id = ? AND u.symbol = ? ORDER BY u.cycle DESC LIMIT ?",
            (run_id, symbol, n),
        ).fetchall()
        lines = []
        for cycle, end, action, conviction, realised, error, pnl in reversed(rows):
            error_text = "n/a" if error is None else f"{error:+.4f}"
            pnl_text = "n/a" if pnl is None else f"{pnl:+.2f}"
            lines.append(
                f"cycle {cycle}: {action} (conviction {conviction:.2f}); by {end[:16]}Z the return was "
                f"{realised:+.4f}, forecast error {error_text}, pnl of the target position {pnl_text}"
            )
        return lines

    # Reading ---------------------------------------------------------------------------
    def rows(self, table: str, run_id: str | None = None, last_cycles: int | None = None) -> list[dict[str, Any]]:
        """Rows of one table (optionally one run, optionally its last ``last_cycles`` cycles), oldest first."""
        if table not in TABLES:
            raise ValueError(f"unknown journal table {table!r}")
        where: list[str] = []
        args: list[Any] = []
        if run_id is not None:
            where.append("run_id = ?")
            args.append(run_id)
            if last_cycles is not None and table != "runs":
                where.append("cycle > (SELECT COALESCE(MAX(cycle), 0) FROM cycles WHERE run_id = ?) - ?")
                args += [run_id, last_cycles]
        sql = f"SELECT * FROM {table}" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY rowid"
        return [dict(r) for r in self._db.execute(sql, args)]

    def latest_run(self) -> str | None:
        row = self._db.execute("SELECT run_id FROM runs ORDER BY started_at DESC, rowid DESC LIMIT 1").fetchone()
        return None if row is None else str(row[0])
