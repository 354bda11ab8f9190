"""`fmtrade data ...` and `fmtrade demo` through the real CLI entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pandas as pd
import pytest

from fmtrade.data.bybit import BybitClient
from fmtrade.data.replay import ReplayServer
from fmtrade.data.store import Store
from tests.conftest import REPO, SHARED_DATA, needs_shared, run_cli


def run(capsys, *args: str) -> tuple[int, str, str]:
    return run_cli(list(args), capsys)


def run_json(capsys, *args: str) -> dict:
    code, out, err = run(capsys, *args, "--json")
    assert code == 0, err
    assert out.count("\n") == 1  # exactly one JSON document on stdout
    return json.loads(out)


def test_synth_then_show(capsys, isolated_home):
    doc = run_json(capsys, "data", "synth", "--symbols", "SYNA,SYNB", "--hours", "300", "--seed", "1")
    assert [s["symbol"] for s in doc["series"]] == ["SYNA", "SYNB"]
    assert doc["store"] == str(isolated_home / "store")  # default under FMTRADE_HOME
    assert doc["series"][0]["funding_rows"] == 37  # settlements at 08:00 ... 296 h in
    show = run_json(capsys, "data", "show", "--symbol", "SYNB", "--interval", "60")
    assert show == {
        "symbol": "SYNB", "category": "linear", "interval": "60", "rows": 300,
        "first": "2022-01-01T00:00:00Z", "last": "2022-01-13T11:00:00Z", "missing_bars": 0, "gaps": [],
    }  # fmt: skip
    code, out, _ = run(capsys, "data", "show", "--symbol", "SYNB", "--interval", "60")
    assert code == 0 and "SYNB" in out and "2022-01-13T11:00:00Z" in out


def test_import_then_show_reports_gaps(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("FMTRADE_STORE", str(tmp_path / "envstore"))
    monkeypatch.setenv("FMTRADE_DATA__CATEGORY", "spot")  # spot dumps: every command's default --category
    index = pd.date_range("2024-01-01", periods=50, freq="h", tz="UTC")
    frame = pd.DataFrame(
        {
            "timestamp": index.astype("int64") // 10**6,
            "open": 10.0,
            "high": 11.0,
            "low": 9.0,
            "close": 10.5,
            "volume": 1.0,
        }
    ).drop([5, 6, 30])
    frame.to_csv(tmp_path / "bars.csv", index=False)
    doc = run_json(capsys, "data", "import", str(tmp_path / "bars.csv"), "--symbol", "ABCUSDT", "--interval", "60")
    assert (doc["rows"], doc["new_bars"], doc["category"]) == (47, 47, "spot")
    assert Store(str(tmp_path / "envstore")).read("ABCUSDT", "60", category="spot").shape == (47, 6)
    show = run_json(capsys, "data", "show", "--symbol", "ABCUSDT", "--interval", "60")
    assert show["category"] == "spot" and show["rows"] == 47
    assert show["gaps"] == [
        {"start": "2024-01-01T05:00:00Z", "end": "2024-01-01T06:00:00Z", "missing_bars": 2},
        {"start": "2024-01-02T06:00:00Z", "end": "2024-01-02T06:00:00Z", "missing_bars": 1},
    ]


def test_sync_from_replay_server(capsys, tmp_path):
    source = Store(str(tmp_path / "source"))
    run_json(capsys, "data", "synth", "--symbols", "SYNAUSDT,SYNBUSDT", "--hours", "1200", "--store", source.root)
    last = source.read("SYNAUSDT", "60").index[-1]
    with ReplayServer(source, now=last + pd.Timedelta(hours=1)) as server:
        args = [
            "data",
            "sync",
            "--symbols",
            "SYNAUSDT,SYNBUSDT",
            "--interval",
            "60",
            "--category",
            "linear",
            "--start",
            "2022-01-01",
            "--base-url",
            server.url,
            "--store",
            str(tmp_path / "dest"),
        ]
        doc = run_json(capsys, *args)
        again = run_json(capsys, *args)
    assert doc["new_bars"] == 2400 and [s["rows"] for s in doc["symbols"]] == [1200, 1200]
    assert doc["symbols"][0]["last"] == "2022-02-19T23:00:00Z" and doc["symbols"][0]["new_funding"] == 149
    assert again["fetched_bars"] == 0
    dest = Store(str(tmp_path / "dest"))
    pd.testing.assert_frame_equal(dest.read("SYNBUSDT", "60"), source.read("SYNBUSDT", "60"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["data", "show", "--symbol", "X", "--interval", "61"], "--interval: '61' is not a Bybit interval"),
        (["data", "show", "--symbol", "X", "--interval", "60", "--category", "futures"], "--category"),
        (["data", "show", "--symbol", "NOPE", "--interval", "60"], "no bars stored for linear/NOPE/60"),
        (["data", "sync", "--symbols", "A,,B", "--start", "2024-01-01"], "--symbols: expected a comma-separated"),
        (["data", "sync", "--symbols", "A", "--start", "soon"], "--start: not a valid time"),
        (["data", "sync", "--symbols", "A", "--start", "2024-02-01", "--end", "2024-01-01"], "--end"),
        (["data", "sync", "--symbols", "A"], "--start"),
        (["data", "import", "/nonexistent/file.csv", "--symbol", "X"], "does not exist"),
        (["data", "synth", "--hours", "1"], "--hours"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(capsys, args, message):
    code, out, err = run(capsys, *args)
    assert code == 2 and out == ""
    lines = [line for line in err.splitlines() if line.strip()]
    assert message in err, err
    assert len(lines) <= 3 and "Traceback" not in err  # click's usage errors add a usage line and a hint


def test_bad_import_file_names_the_row(capsys, tmp_path):
    (tmp_path / "bad.csv").write_text("timestamp,open,high,low,close,volume\n0,1,2,0.5,1,1\n3600000,1,0.9,0.5,1,1\n")
    code, out, err = run(capsys, "data", "import", str(tmp_path / "bad.csv"), "--symbol", "X", "--interval", "60")
    assert (code, out) == (2, "")
    assert err.strip().splitlines() == [f"error: {tmp_path / 'bad.csv'}: row 2: high 0.9 is below max(open, close)"]


@pytest.mark.slow
def test_replay_command_serves_the_store(capsys, tmp_path, port):
    store = str(tmp_path / "store")
    run_json(capsys, "data", "synth", "--symbols", "SYNAUSDT", "--hours", "100", "--store", store)
    env = os.environ | {"PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fmtrade", "data", "replay", "--port", str(port), "--store", store],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        with BybitClient(f"http://127.0.0.1:{port}", rate_limiter=None, max_attempts=1) as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    client.server_time()
                    break
                except Exception:
                    assert proc.poll() is None, proc.stderr.read().decode()
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
            bars = client.klines("linear", "SYNAUSDT", "60", "2022-01-01", "2022-01-05 03:00")
        pd.testing.assert_frame_equal(bars, Store(store).read("SYNAUSDT", "60"))
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.slow
@needs_shared
@pytest.mark.shared
def test_shared_btcusdt_import_reports_its_five_real_gaps(capsys, tmp_path):
    path = SHARED_DATA / "BTCUSDT.parquet"
    raw = pd.read_parquet(path)
    steps = raw["timestamp"].diff()
    holes = raw.index[steps > pd.Timedelta(hours=1)]
    expected = [
        {
            "start": (raw["timestamp"][i - 1] + pd.Timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "end": (raw["timestamp"][i] - pd.Timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "missing_bars": int(steps[i] / pd.Timedelta(hours=1)) - 1,
        }
        for i in holes
    ]
    assert len(expected) == 5
    store = str(tmp_path / "store")
    imported = run_json(
        capsys,
        "data",
        "import",
        str(path),
        "--symbol",
        "BTCUSDT",
        "--interval",
        "60",
        "--category",
        "spot",
        "--store",
        store,
    )
    assert imported["rows"] == len(raw)
    show = run_json(
        capsys, "data", "show", "--symbol", "BTCUSDT", "--interval", "60", "--category", "spot", "--store", store
    )
    assert show["gaps"] == expected
    assert show["rows"] == len(raw) and show["first"] == "2021-04-04T20:00:00Z"


def test_every_command_defaults_to_the_configured_category(capsys, tmp_path, monkeypatch):
    """What `data synth` and `data import` write without --category is what `data show` (and every
    other command) reads without it: data.category."""
    monkeypatch.setenv("FMTRADE_STORE", str(tmp_path / "store"))
    synth = run_json(capsys, "data", "synth", "--symbols", "SYNA", "--hours", "100")
    assert synth["series"][0]["category"] == "linear"  # data.category's default
    assert run_json(capsys, "data", "show", "--symbol", "SYNA")["category"] == "linear"
    monkeypatch.setenv("FMTRADE_DATA__CATEGORY", "inverse")
    code, _, err = run(capsys, "data", "show", "--symbol", "SYNA")
    assert code == 2 and "no bars stored for inverse/SYNA/60" in err
