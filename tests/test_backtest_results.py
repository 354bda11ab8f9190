"""A whole asset backtest in-process: no look-ahead, reproducibility, outputs and their schema."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from fmtrade.backtest.config import BacktestConfig
from fmtrade.backtest.engine import forecast_assets
from fmtrade.backtest.outputs import write_run
from fmtrade.backtest.results import BUY_AND_HOLD, SUMMARY_FIELDS, BacktestRun, run_asset
from fmtrade.backtest.windows import plan_windows
from tests.backtest_support import BootstrapForecaster, DriftForecaster, perturb_after, synthetic_markets

CONFIG = BacktestConfig(
    start=pd.Timestamp("2023-01-12", tz="UTC"),
    end=pd.Timestamp("2023-03-01", tz="UTC"),
    context=200,
    horizon=24,
    rebalance=8,
    threshold=0.002,
)
MODELS = (DriftForecaster(), BootstrapForecaster())


def backtest(markets, config=CONFIG, models=MODELS) -> BacktestRun:
    assets = [(m, plan_windows(m, config)) for m in markets.values()]
    forecasts = {model.name: forecast_assets(model, assets, config) for model in models}
    results = [run_asset(m, w, {n: f[m.symbol] for n, f in forecasts.items()}, config) for m, w in assets]
    return BacktestRun(config, results)


@pytest.fixture(scope="module")
def markets():
    return synthetic_markets(("AAA", "BBB"), hours=1600)


@pytest.fixture(scope="module")
def run(markets):
    return backtest(markets)


@pytest.mark.parametrize("strategy", ["threshold", "risk"])
def test_no_look_ahead_perturbing_the_future_changes_nothing_before_it(markets, strategy):
    config = replace(CONFIG, strategy=strategy)
    cutoff = pd.Timestamp("2023-02-10T05:00Z")
    base = backtest(markets, config)
    moved = backtest({s: perturb_after(m, cutoff) for s, m in markets.items()}, config)
    for name in ("positions", "forecasts"):
        before, after = base.frame(name), moved.frame(name)
        past = before["timestamp"] <= cutoff
        cols = [c for c in before.columns if c != "realized_return"]
        assert past.sum() > 100
        pd.testing.assert_frame_equal(before.loc[past, cols], after.loc[past, cols])
        # ... and the perturbation did reach the future, so the comparison can fail.
        assert not before.loc[~past, "equity" if name == "positions" else "expected_return"].equals(
            after.loc[~past, "equity" if name == "positions" else "expected_return"]
        )
    trades = base.frame("trades")
    assert not trades[trades["timestamp"] <= cutoff].empty


def test_same_seed_gives_bit_identical_outputs_and_another_seed_does_not(markets, run, tmp_path):
    again = backtest(markets)
    for name in ("positions", "forecasts", "trades"):
        pd.testing.assert_frame_equal(run.frame(name), again.frame(name), check_exact=True)
    write_run(run, tmp_path / "a", plots=False)
    write_run(again, tmp_path / "b", plots=False)
    for file in ("positions.parquet", "forecasts.parquet", "trades.parquet", "summary.json", "metrics.csv"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes(), file
    other = backtest(markets, replace(CONFIG, seed=5), models=(BootstrapForecaster(),))
    first = run.frame("forecasts")
    assert not np.array_equal(
        first[first["model"] == "bootstrap"]["expected_return"].to_numpy(),
        other.frame("forecasts")["expected_return"].to_numpy(),
    )


def test_every_bar_every_model_and_buy_and_hold_are_reported(run, markets):
    positions = run.frame("positions")
    windows = plan_windows(markets["AAA"], CONFIG)
    bars = windows.stop - windows.first
    counts = positions.groupby(["symbol", "model"]).size()
    assert set(counts.index.get_level_values("model")) == {"drift", "bootstrap", BUY_AND_HOLD}
    assert (counts == bars).all()
    forecasts = run.frame("forecasts")
    assert (forecasts.groupby(["symbol", "model"]).size() == len(windows)).all()
    rows = {(r["symbol"], r["model"]): r for r in run.summary}
    assert len(rows) == 6
    assert rows[("AAA", BUY_AND_HOLD)]["trades"] == 1 and rows[("AAA", BUY_AND_HOLD)]["mape"] is None
    drift = rows[("AAA", "drift")]
    assert 0 <= drift["directional_accuracy"] <= 1 and drift["wql"] > 0 and drift["trades"] > 0
    for row in run.summary:
        last = positions[(positions["symbol"] == row["symbol"]) & (positions["model"] == row["model"])]
        assert row["total_return"] == pytest.approx(last["equity"].iloc[-1] / CONFIG.initial_equity - 1, rel=1e-9)


def test_run_directory_holds_every_output_with_its_schema(run, tmp_path):
    out = write_run(run, tmp_path / "runs" / "x")
    positions = pq.read_table(out / "positions.parquet").to_pandas()
    assert {"timestamp", "symbol", "model", "position", "equity", "pnl", "cost", "funding"} <= set(positions.columns)
    assert str(positions["timestamp"].dtype).startswith("datetime64") and positions["timestamp"].dt.tz is not None
    forecasts = pq.read_table(out / "forecasts.parquet").to_pandas()
    assert {"timestamp", "symbol", "model", "expected_return", "q0.1", "q0.5", "q0.9"} <= set(forecasts.columns)
    trades = pq.read_table(out / "trades.parquet").to_pandas()
    assert {"timestamp", "symbol", "model", "side", "units", "price", "notional", "cost"} <= set(trades.columns)
    summary = json.loads((out / "summary.json").read_text())
    assert [list(r) for r in summary] == [list(SUMMARY_FIELDS)] * len(summary)
    metrics = pd.read_csv(out / "metrics.csv")
    assert {"mase", "coverage_80", "da_ci_low", "annual_return", "calmar", "turnover"} <= set(metrics.columns)
    assert "NaN" not in (out / "metrics.json").read_text()
    for symbol in ("AAA", "BBB"):
        for kind in ("equity", "drawdown", "fan"):
            assert (out / "plots" / f"{symbol}_{kind}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 6 and "buy-and-hold" in html
    assert not list(out.rglob("*.tmp"))
