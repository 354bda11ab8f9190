"""`fmtrade demo` end to end, as `make demo` runs it: the shipped real sample (two of its symbols, to keep it
short) and the shipped zoo; the synthetic market runs in tests/test_packaging.py. It runs with fake
secrets in its environment, and nothing it writes or prints may contain one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fmtrade.models.shipped import shipped_checkpoint
from tests.secrets_scan import SECRETS, leaks

RAY_SESSIONS = Path("/tmp/ray")  # where the embedded Ray keeps its session (logs)

pytestmark = pytest.mark.slow


def test_demo_runs_data_models_backtest_and_serve(
    isolated_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    # One token, so the demo's client (FMTRADE_API_TOKEN) and its service agree.
    monkeypatch.setenv("FMTRADE_SERVE__API_TOKEN", SECRETS["FMTRADE_API_TOKEN"])
    sessions = set(RAY_SESSIONS.glob("session_*"))
    done = subprocess.run(
        [sys.executable, "-m", "fmtrade", "demo", "--symbols", "BTCUSDT,XRPUSDT", "--backtest-days", "4", "--json"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    # a clean run prints no traceback and no warning forwarded from Ray's own processes
    assert "Traceback" not in done.stderr and "(raylet)" not in done.stderr, done.stderr[-3000:]
    report = json.loads(done.stdout)
    symbols = ["BTCUSDT", "XRPUSDT"]

    assert report["data"]["ok"] is True
    assert [s["symbol"] for s in report["data"]["series"]] == symbols
    assert all(s["rows"] == 23988 and s["identical"] for s in report["data"]["series"])
    assert all(s["last"].startswith("2023-12-30T") for s in report["data"]["series"])

    built = {row["name"]: row["status"] for row in report["zoo"]}
    assert set(built) == {"chronos-fm-tiny", "chronos-bolt-fm-tiny", "chronos2-fm-tiny", "timesfm-fm-tiny",
                          "lagllama-fm-tiny", "fracast-0"}  # fmt: skip
    assert all((isolated_home / "zoo" / name / "config.json").is_file() for name in built)
    shipped = {name for name in built if shipped_checkpoint(name) is not None}
    assert all(built[name] == ("shipped" if name in shipped else "built") for name in built)

    rows = report["backtest"]["summary"]
    models = {r["model"] for r in rows}
    off_by_default = {"chronos-fm-tiny", "lagllama-fm-tiny"}  # built, but not in the default ensemble
    assert {"random-walk", "ensemble", "buy-and-hold", *(set(built) - off_by_default)} <= models
    assert not off_by_default & models
    assert {r["symbol"] for r in rows} == set(symbols)
    run = Path(report["backtest"]["out"])
    assert run == isolated_home / "runs" / "demo"
    assert (run / "report.html").is_file() and json.loads((run / "summary.json").read_text()) == rows

    forecasts = {row["symbol"]: row for row in report["forecasts"]}
    assert list(forecasts) == symbols
    for row in forecasts.values():
        assert row["q10"] <= row["median"] <= row["q90"]
        assert row["models"] >= 5 and row["failed"] == "-"

    decisions = {d["symbol"]: d for d in report["agent"]["decisions"]}
    assert list(decisions) == symbols  # one agent cycle: a decision per symbol, each with its reasons
    assert all(d["action"] in ("long", "short", "hold") and d["reasoning"] for d in decisions.values())

    new_sessions = [p for p in RAY_SESSIONS.glob("session_*") if p not in sessions and not p.is_symlink()]
    assert new_sessions  # the embedded Ray's logs are scanned too
    assert leaks([isolated_home, *new_sessions], {"stdout": done.stdout, "stderr": done.stderr}) == []
