"""The Ray backtest job on an embedded local Ray: same results as in-process, clear errors."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest
import ray

from fmtrade.backtest.engine import forecast_assets, walk_forward
from fmtrade.backtest.windows import plan_windows
from fmtrade.config import load_settings
from fmtrade.errors import InputError
from fmtrade.evaluation import EvalParams, evaluate_symbol
from fmtrade.jobs.backtest import PoolOptions, run_backtest
from fmtrade.jobs.evaluate import run_evaluate_job
from fmtrade.jobs.ray_runtime import init_ray
from fmtrade.models.registry import ModelSpec, build_forecaster
from fmtrade.walkforward import WalkForward
from tests.backtest_support import BootstrapForecaster, DriftForecaster, synthetic_markets
from tests.test_backtest_results import CONFIG, MODELS, backtest

#: The drift model as forecast, the bootstrap model recalibrated, and their online ensemble.
WALK = WalkForward(calibrated=frozenset({"bootstrap"}), ensemble={"drift": 2.0, "bootstrap": 1.0})


@pytest.fixture(scope="module")
def local_ray():
    init_ray("local", num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def markets():
    return synthetic_markets(("AAA", "BBB", "CCC"), hours=1600)


FACTORIES = {"drift": DriftForecaster, "bootstrap": BootstrapForecaster}


@pytest.mark.slow
def test_ray_job_equals_the_in_process_backtest_whatever_the_placement(local_ray, markets):
    options = PoolOptions(actors=2, num_cpus=0.5, chunk_size=45)  # many chunks over two actors per model
    seen = []
    run = run_backtest(
        markets,
        FACTORIES,
        CONFIG,
        walk=WALK,
        options=options,
        progress=seen.append,
    )
    local = backtest(markets)
    assert sum(seen) == len(local.frame("forecasts"))
    # Recalibration moves quantiles, never the mean the threshold rule trades on: the members'
    # positions and trades equal the raw in-process run's, and so does the uncalibrated member's forecast.
    for name, kept in (
        ("positions", ["drift", "bootstrap"]),
        ("trades", ["drift", "bootstrap"]),
        ("forecasts", ["drift"]),
    ):
        remote = run.frame(name)
        remote = remote[remote["model"].isin(kept)].reset_index(drop=True)
        here = local.frame(name)
        pd.testing.assert_frame_equal(remote, here[here["model"].isin(kept)].reset_index(drop=True), check_exact=True)
    assert {r["model"] for r in run.summary} == {"drift", "bootstrap", "ensemble", "buy-and-hold"}
    assert [r["symbol"] for r in run.summary][::4] == ["AAA", "BBB", "CCC"]
    # The ensemble and the recalibrated member are the engine's walk-forward of the in-process forecasts.
    forecasts = run.frame("forecasts")
    for market in markets.values():
        windows = plan_windows(market, CONFIG)
        raw = {m.name: forecast_assets(m, [(market, windows)], CONFIG)[market.symbol] for m in MODELS}
        expected = walk_forward(market, windows, raw, CONFIG, WALK)
        for model in ("ensemble", "bootstrap"):
            rows = forecasts[(forecasts["symbol"] == market.symbol) & (forecasts["model"] == model)]
            np.testing.assert_allclose(rows["q0.9"], expected[model].return_quantiles()[:, -1], rtol=1e-12)


def test_horizon_beyond_a_models_max_fails_before_any_forecast(local_ray, markets):
    seen = []
    short = {"drift": functools.partial(DriftForecaster, max_horizon=12)}
    with pytest.raises(InputError, match="horizon: 24 exceeds drift's max_horizon 12"):
        run_backtest(markets, short, CONFIG, progress=seen.append)
    assert seen == []


@pytest.mark.slow
def test_evaluate_job_matches_the_in_process_evaluation(local_ray, markets):
    settings = load_settings()
    specs = [ModelSpec(name="random-walk", adapter="random-walk"), ModelSpec(name="naive", adapter="naive")]
    params = EvalParams(128, 12, 24, None, None)
    series = {s: pd.Series(m.close, index=m.timestamps) for s, m in markets.items()}
    walk = WalkForward(calibrated=frozenset({"naive"}), ensemble={"random-walk": 1.0, "naive": 1.0})
    rows = run_evaluate_job(series, specs, settings, params, walk)
    local = []
    for symbol, closes in series.items():
        models = {spec.name: build_forecaster(spec, settings) for spec in specs}
        local.extend(evaluate_symbol(symbol, closes, models, params, walk))
    assert rows == local
    assert [r["symbol"] for r in rows] == [s for s in series for _ in range(3)]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_more_models_than_the_cluster_holds_run_in_turn_without_deadlock(local_ray, markets):
    names = ("drift-a", "drift-b", "drift-c")
    factories = {n: functools.partial(DriftForecaster, name=n, lookback=24 + 8 * i) for i, n in enumerate(names)}
    options = PoolOptions(actors=2, num_cpus=0.75, chunk_size=60)  # 6 actors x 0.75 CPU > 2 CPUs
    run = run_backtest({"AAA": markets["AAA"]}, factories, CONFIG, options=options)
    assert [r["model"] for r in run.summary] == [*names, "buy-and-hold"]
