"""`fmtrade agent run` and `fmtrade agent journal` end to end against the replay server over real HTTP."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from fmtrade.backtest.simulator import Costs
from fmtrade.config import load_settings
from fmtrade.data.replay import ReplayServer
from fmtrade.data.store import Store
from tests.conftest import run_cli

HOURS = 600
NOW = pd.Timestamp("2024-01-01T00:00Z") + pd.Timedelta(hours=HOURS)
KEY, SECRET = "fake-key-cli-P3", "fake-secret-cli-Hq72LmW"
# Trend-following statistical members (no checkpoint needed): their forecast carries the trend.
RUN = ["agent", "run", "--symbols", "UPUSDT,DOWNUSDT", "--category", "linear", "--models", "theta,auto-ets"]


def _trending(drift: float, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(drift + 0.004 * rng.standard_normal(HOURS)))
    open_ = np.r_[100.0, close[:-1]]
    index = pd.date_range("2024-01-01", periods=HOURS, freq="h", tz="UTC")
    return pd.DataFrame(
        {"open": open_, "high": np.maximum(open_, close) * 1.001, "low": np.minimum(open_, close) * 0.999,
         "close": close, "volume": 1000 + 100 * rng.random(HOURS), "turnover": close * 1000},
        index=index,
    )  # fmt: skip


@pytest.fixture(scope="module")
def replay(tmp_path_factory):
    """A market where the rules clearly want UPUSDT long and DOWNUSDT short."""
    store = Store(str(tmp_path_factory.mktemp("agent-cli-store")))
    for symbol, drift, seed in (("UPUSDT", 0.001, 1), ("DOWNUSDT", -0.001, 2)):
        bars = _trending(drift, seed)
        store.write_bars("linear", symbol, "60", bars)
        store.write_funding("linear", symbol, pd.DataFrame({"funding_rate": 0.0001}, index=bars.index[::8]))
    with ReplayServer(store, now=NOW, accounts={KEY: SECRET}, initial_balance=100_000.0) as server:
        yield server


def test_a_cycle_decides_with_reasons_fills_on_paper_and_the_journal_shows_it(replay, capsys) -> None:
    code, out, err = run_cli([*RUN, "--base-url", replay.url, "--run-id", "cli-1", "--json"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    actions = {d["symbol"]: d["action"] for d in doc["decisions"]}
    assert actions == {"UPUSDT": "long", "DOWNUSDT": "short"}
    for decision in doc["decisions"]:
        assert set(decision) >= {"symbol", "action", "confidence", "size", "reasoning"}
        assert any(r.startswith("forecast.expected_return") for r in decision["reasoning"])
    fills = {f["symbol"]: f for f in doc["fills"]}
    assert fills["UPUSDT"]["side"] == "Buy" and fills["DOWNUSDT"]["side"] == "Sell"
    for fill in fills.values():
        assert fill["fee"] == pytest.approx(fill["qty"] * fill["price"] * Costs().rate)
    positions = doc["portfolio"]["positions"]
    assert positions["UPUSDT"]["qty"] > 0 > positions["DOWNUSDT"]["qty"]
    assert doc["portfolio"]["equity"] == pytest.approx(100_000 - sum(f["fee"] for f in doc["fills"]))

    code, out, err = run_cli(["agent", "journal", "--json"], capsys)
    assert code == 0, err
    journal = json.loads(out)
    assert journal["run_id"] == "cli-1" and [c["status"] for c in journal["cycles"]] == ["done"]
    printed = {d["symbol"]: d["reasoning"] for d in doc["decisions"]}  # the reasoner's, then the clamps'
    assert sorted(d["symbol"] for d in journal["decisions"]) == ["DOWNUSDT", "UPUSDT"]
    for decision in journal["decisions"]:
        assert decision["reasons"] and decision["reasons"] == printed[decision["symbol"]][: len(decision["reasons"])]
    assert {c["rule"] for c in journal["clamps"]} == {c["rule"] for c in doc["clamps"]}
    assert [o["status"] for o in journal["orders"]] == ["Filled", "Filled"]
    assert sorted(f["order_link_id"] for f in journal["fills"]) == sorted(f["order_link_id"] for f in doc["fills"])
    assert journal["equity"][0]["equity"] == pytest.approx(doc["portfolio"]["equity"])

    # The same run again: the cycle number goes on, the paper account is restored, nothing is re-bought.
    code, out, err = run_cli([*RUN, "--base-url", replay.url, "--run-id", "cli-1", "--json"], capsys)
    again = json.loads(out)
    assert code == 0 and again["decisions"][0]["cycle"] == 2
    assert again["portfolio"]["positions"].keys() == positions.keys() and again["orders"] == []


def test_the_human_output_is_the_decisions_table_and_the_portfolio(replay, capsys) -> None:
    code, out, err = run_cli([*RUN, "--base-url", replay.url, "--once"], capsys)
    assert code == 0, err
    for word in ("symbol", "action", "confidence", "reasons", "UPUSDT", "long", "DOWNUSDT", "short", "portfolio"):
        assert word in out
    code, out, _ = run_cli(["agent", "journal", "--last", "1"], capsys)
    assert code == 0 and "decisions" in out and "Filled" in out


def test_the_bybit_broker_path_never_shows_the_key(replay, capsys, monkeypatch, caplog) -> None:
    monkeypatch.setenv("FMTRADE_AGENT__API_KEY", KEY)
    monkeypatch.setenv("FMTRADE_AGENT__API_SECRET", SECRET)
    replay.reset_log()
    code, out, err = run_cli(["-v", *RUN, "--broker", "bybit", "--base-url", replay.url, "--json"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert [o["status"] for o in doc["orders"]] == ["Filled", "Filled"]
    assert [r.path for r in replay.requests].count("/v5/order/create") == 2
    journal = load_settings().agent_journal()
    stored = b"".join(p.read_bytes() for p in journal.parent.glob(journal.name + "*"))
    for secret in (KEY, SECRET):
        assert secret not in out and secret not in err and secret not in caplog.text
        assert secret.encode() not in stored


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--every", "soon"], "--every"),
        (["--every", "-1h"], "--every"),
        (["--once", "--every", "1h"], "--every"),
        (["--reasoner", "oracle"], "--reasoner"),
        (["--broker", "paper", "--live"], "--live"),
        (["--symbols", "NOPEUSDT"], "NOPEUSDT"),
        (["--models", "no-such-model"], "no-such-model"),
    ],
)
def test_bad_input_exits_2_with_one_line(replay, capsys, extra, message) -> None:
    code, out, err = run_cli([*RUN, "--base-url", replay.url, *extra], capsys)
    assert code == 2 and message in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error:")


def test_journal_without_a_journal_exits_2(capsys) -> None:
    code, _, err = run_cli(["agent", "journal"], capsys)
    assert code == 2 and "no journal" in err


def test_ctrl_c_ends_the_run_after_the_cycle_and_prints_the_portfolio(replay, tmp_path) -> None:
    """A real process and a real SIGINT: the frozen replay clock keeps `--every 1h` waiting after cycle 1."""
    env = dict(os.environ, FMTRADE_HOME=str(tmp_path / "home"))
    argv = [sys.executable, "-m", "fmtrade", *RUN, "--base-url", replay.url, "--every", "1h", "--run-id", "sig"]
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    journal = tmp_path / "home" / "agent" / "journal.sqlite"
    deadline = time.monotonic() + 120
    while not _cycles_done(journal):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-2000:]
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err[-2000:]
    assert "stopping after the current cycle" in err and "Traceback" not in err
    assert "cycle 1" in out and "portfolio: equity" in out and "UPUSDT" in out
    assert _cycles_done(journal) == 1


def _cycles_done(path) -> int:
    if not path.exists():
        return 0
    with sqlite3.connect(path) as db:
        try:
            return int(db.execute("SELECT COUNT(*) FROM cycles WHERE status = 'done'").fetchone()[0])
        except sqlite3.OperationalError:  # the schema is still being created
            return 0
