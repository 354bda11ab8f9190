"""Walk-forward windows and batched inference: no look-ahead, batched == per-window loop."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from fmtrade.backtest.config import BacktestConfig
from fmtrade.backtest.engine import collect_windows, forecast_assets, forecast_batched
from fmtrade.backtest.windows import contexts, plan_windows, realized, window_seed
from fmtrade.config import load_settings
from fmtrade.errors import InputError
from fmtrade.models.registry import active_specs, build_forecaster, select_specs
from fmtrade.models.zoo import build_zoo
from tests.backtest_support import BootstrapForecaster, DriftForecaster, synthetic_markets

CONFIG = BacktestConfig(
    start=pd.Timestamp("2023-01-15", tz="UTC"),
    end=pd.Timestamp("2023-03-01", tz="UTC"),
    context=256,
    horizon=12,
    rebalance=12,
)


@pytest.fixture(scope="module")
def markets():
    return synthetic_markets(("AAA", "BBB", "CCC"))


def assets(markets, config=CONFIG):
    return [(m, plan_windows(m, config)) for m in markets.values()]


def test_windows_see_only_bars_strictly_before_each_point(markets):
    market = markets["AAA"]
    windows = plan_windows(market, CONFIG)
    assert windows.timestamps[0] == CONFIG.start
    assert (np.diff(windows.points) == CONFIG.rebalance).all()
    assert market.timestamps[windows.stop - 1] < CONFIG.end <= market.timestamps[windows.stop]
    for i, ctx in zip(windows.points, contexts(market, windows, CONFIG.context), strict=True):
        assert ctx.size == CONFIG.context
        np.testing.assert_array_equal(ctx, market.close[i - CONFIG.context : i])
    truth = realized(market, windows, CONFIG.horizon)
    np.testing.assert_array_equal(truth[0], market.close[windows.points[0] : windows.points[0] + CONFIG.horizon])
    assert np.isnan(truth[-1]).any() or windows.points[-1] + CONFIG.horizon <= windows.stop


def test_bad_ranges_fail_with_the_field_named(markets):
    market = markets["AAA"]
    too_long = BacktestConfig(start=market.timestamps[100], end=market.timestamps[500], context=512)
    with pytest.raises(InputError, match="context"):
        plan_windows(market, too_long)
    outside = BacktestConfig(start=pd.Timestamp("2030-01-01", tz="UTC"), end=pd.Timestamp("2030-02-01", tz="UTC"))
    with pytest.raises(InputError, match="start"):
        plan_windows(market, outside)
    past_end = BacktestConfig(start=market.timestamps[600], end=market.timestamps[-1] + pd.Timedelta(days=5))
    with pytest.raises(InputError, match="end"):
        plan_windows(market, past_end)


def test_window_seeds_depend_on_seed_symbol_and_time_only():
    t = pd.Timestamp("2023-05-01T10:00Z")
    assert window_seed(7, "BTCUSDT", t) == window_seed(7, "BTCUSDT", t)
    assert (
        len(
            {
                window_seed(7, "BTCUSDT", t),
                window_seed(8, "BTCUSDT", t),
                window_seed(7, "ETHUSDT", t),
                window_seed(7, "BTCUSDT", t + pd.Timedelta(hours=1)),
            }
        )
        == 4
    )


@pytest.mark.parametrize("model", [DriftForecaster(max_batch_size=64), BootstrapForecaster()], ids=lambda m: m.name)
def test_batched_engine_equals_the_per_window_loop(markets, model):
    batch = collect_windows(assets(markets), CONFIG.context)
    assert len(batch) > 3 * 80
    loop = forecast_batched(model, batch, CONFIG.horizon, CONFIG.quantile_levels, batch_size=1)
    for size in (37, 4096):
        batched = forecast_batched(model, batch, CONFIG.horizon, CONFIG.quantile_levels, batch_size=size)
        np.testing.assert_array_equal(batched.mean, loop.mean)
        np.testing.assert_array_equal(batched.quantiles, loop.quantiles)
        np.testing.assert_array_equal(batched.last_values, loop.last_values)


def test_forecasts_per_asset_do_not_depend_on_which_assets_share_the_batch(markets):
    model = BootstrapForecaster()
    together = forecast_assets(model, assets(markets), CONFIG)
    alone = forecast_assets(model, assets({"BBB": markets["BBB"]}), CONFIG)
    np.testing.assert_array_equal(together["BBB"].mean, alone["BBB"].mean)
    np.testing.assert_array_equal(together["BBB"].quantiles, alone["BBB"].quantiles)


def test_sampling_model_reproduces_with_the_seed_and_changes_without(markets):
    model = BootstrapForecaster()
    one = forecast_assets(model, assets(markets), CONFIG)["AAA"]
    again = forecast_assets(model, assets(markets), CONFIG)["AAA"]
    other = forecast_assets(model, assets(markets, replace(CONFIG, seed=1)), CONFIG)["AAA"]
    np.testing.assert_array_equal(one.mean, again.mean)
    assert not np.array_equal(one.mean, other.mean)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lagllama-fm-tiny", "chronos-fm-tiny"])
def test_real_sampling_models_reproduce_per_window_whatever_the_batch(markets, name, tmp_path):
    settings = load_settings(overrides={"home": str(tmp_path), "models": {"device": "cpu"}})
    build_zoo(settings, only=[name])
    model = build_forecaster(select_specs(active_specs(settings), [name])[0], settings)
    assert model.stochastic
    config = replace(CONFIG, context=128, horizon=8, rebalance=96)
    one = assets({"AAA": markets["AAA"]}, config)
    batch = collect_windows(one, config.context)
    assert len(batch) >= 10
    loop = forecast_batched(model, batch, config.horizon, config.quantile_levels, batch_size=1)
    batched = forecast_batched(model, batch, config.horizon, config.quantile_levels, batch_size=7)
    np.testing.assert_array_equal(batched.quantiles, loop.quantiles)
    reseeded = forecast_assets(model, assets({"AAA": markets["AAA"]}, replace(config, seed=99)), config)
    assert not np.array_equal(reseeded["AAA"].quantiles, batched.quantiles)
