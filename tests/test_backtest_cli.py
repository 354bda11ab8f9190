"""``fmtrade backtest`` and ``python -m fmtrade backtest`` (what cluster jobs run): bad input exits 2 before any work;
a real run over a synthetic store on local Ray writes every output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import ray

from fmtrade.data.store import Store
from fmtrade.data.synthetic import SyntheticSpec, synthesize
from fmtrade.jobs.ray_runtime import init_ray
from tests.conftest import run_cli

SYMBOLS = ("SYNAUSDT", "SYNBUSDT", "SYNCUSDT")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("store")
    market = synthesize(list(SYMBOLS), SyntheticSpec(hours=1500, seed=4, start="2023-01-01"))
    data = Store(str(root))
    for symbol in SYMBOLS:
        data.write_bars("linear", symbol, "60", market.bars[symbol])
        data.write_funding("linear", symbol, market.funding[symbol])
    return str(root)


BASE = ["--start", "2023-01-20", "--end", "2023-02-20", "--context", "256", "--horizon", "24", "--rebalance", "24",
        "--category", "linear", "--models", "random-walk,naive,ensemble"]  # fmt: skip


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--symbols": "SYNAUSDT,NOPEUSDT"}, "symbols: NOPEUSDT: no linear/60 bars"),
        ({"--start": "2025-01-01", "--end": "2025-02-01"}, "start: SYNAUSDT: 2025-01-01 00:00:00+00:00 .. "),
        ({"--end": "2023-06-01"}, "end: SYNAUSDT: 2023-06-02 00:00:00+00:00 is after the last stored bar"),
        ({"--context": "2000"}, "context: SYNAUSDT: 2000 bars of context are needed"),
        ({"--models": "random-walk,nope"}, "models: unknown model(s) nope"),
        ({"--models": "chronos-bolt-fm-tiny"}, "models: no checkpoint for chronos-bolt-fm-tiny (build the local zoo"),
        ({"--strategy": "yolo"}, "strategy: 'yolo' is not one of threshold, risk"),
        ({"--horizon": "0"}, "horizon: must be a positive integer"),
    ],
)
def test_bad_input_exits_2_with_one_clear_line_and_no_work(store, tmp_path, capsys, change, message):
    args = dict(zip(BASE[::2], BASE[1::2], strict=True)) | {"--symbols": ",".join(SYMBOLS)} | change
    out_dir = tmp_path / "run"
    argv = ["backtest", *[x for kv in args.items() for x in kv], "--store", store, "--out", str(out_dir)]
    code, out, err = run_cli(argv, capsys)
    assert code == 2
    assert out == ""
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not out_dir.exists() and not ray.is_initialized()


def _backtest_to(store: str, out: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    return run_cli(["backtest", *BASE, "--symbols", ",".join(SYMBOLS), "--store", store, "--out", out], capsys)


def test_backtest_out_under_a_file_fails_before_the_run(store, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code, out, err = _backtest_to(store, str(tmp_path / "file" / "run"), capsys)
    assert code == 2 and out == ""
    assert err == f"error: out: cannot write to {tmp_path / 'file' / 'run'}: {tmp_path / 'file'} is not a directory\n"
    assert not ray.is_initialized()


def test_backtest_out_on_a_missing_bucket_fails_before_the_run(store, s3_root, capsys):
    code, out, err = _backtest_to(store, "s3://no-such-bucket/runs/x", capsys)
    assert code == 2 and out == ""
    assert err.startswith("error: out: cannot write to s3://no-such-bucket/runs/x: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and "test" not in err.split(": ", 3)[-1]  # no credential in the message
    assert not ray.is_initialized()


@pytest.fixture(scope="module")
def local_ray():
    init_ray("local", num_cpus=2)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_cli_runs_the_ray_job_over_the_store_and_writes_the_run(store, tmp_path, capsys, local_ray):
    out_dir = tmp_path / "runs" / "demo"
    argv = ["backtest", "--symbols", ",".join(SYMBOLS), *BASE, "--store", store, "--out", str(out_dir), "--json"]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    rows = json.loads(out)
    assert {(r["symbol"], r["model"]) for r in rows} == {
        (s, m) for s in SYMBOLS for m in ("random-walk", "naive", "ensemble", "buy-and-hold")
    }
    bh = next(r for r in rows if r["model"] == "buy-and-hold" and r["symbol"] == "SYNAUSDT")
    assert bh["trades"] == 1 and bh["funding"] != 0  # perpetual: the long benchmark pays or earns funding
    for name in ("positions.parquet", "forecasts.parquet", "trades.parquet", "summary.json", "metrics.csv",
                 "report.html", "plots/SYNAUSDT_fan.png"):  # fmt: skip
        assert (out_dir / name).is_file(), name
    assert json.loads((out_dir / "summary.json").read_text()) == rows


@pytest.mark.slow
def test_module_entry_point_rejects_a_horizon_beyond_a_models_max(store, tmp_path):
    """``python -m fmtrade`` is the entry point the RayJob manifest and cluster submissions run."""
    out_dir = tmp_path / "run"
    argv = [
        "--symbols",
        "SYNAUSDT",
        "--models",
        "random-walk",
        "--start",
        "2023-01-20",
        "--end",
        "2023-02-01",
        "--context",
        "64",
        "--horizon",
        "2000",
        "--category",
        "linear",
        "--store",
        store,
        "--out",
        str(out_dir),
    ]
    done = subprocess.run([sys.executable, "-m", "fmtrade", "backtest", *argv], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "horizon: 2000 exceeds random-walk's max_horizon 1024" in done.stderr
    assert "Traceback" not in done.stderr
    assert not Path(out_dir).exists()
