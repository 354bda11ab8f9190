"""The Forecaster contract, checked on every adapter of the model registry (neural ones on tiny
zoo checkpoints built by their real builders, baselines as they are): sorted, shaped quantiles,
finite means, missing values, horizon limits, seeded determinism, and batching that does not
change a row's forecast."""

from __future__ import annotations

import numpy as np
import pytest

from fmtrade.errors import InputError
from fmtrade.models.base import Forecaster
from fmtrade.models.registry import ADAPTERS, adapter_class, zoo_builder

LEVELS = (0.9, 0.05, 0.5, 0.25, 0.95)  # unsorted on purpose
HORIZON = 6
SEEDS = [11, 12, 13]
#: Fewer sample paths than the defaults keep the sampling models fast.
OPTIONS = {"chronos": {"num_samples": 8}, "lagllama": {"num_samples": 32}}


@pytest.fixture(scope="module", params=sorted(ADAPTERS))
def model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Forecaster:
    key = request.param
    cls = adapter_class(key)
    if not ADAPTERS[key].needs_checkpoint:
        return cls(key)
    checkpoint = zoo_builder(key)(tmp_path_factory.mktemp("zoo") / key, size="tiny", seed=0)
    return cls(f"{key}-fm-tiny", str(checkpoint), device="cpu", **OPTIONS.get(key, {}))


def _prices(n: int, seed: int, start: float = 100.0) -> np.ndarray:
    return start * np.exp(np.cumsum(np.random.default_rng(seed).normal(0.0, 0.01, n)))


def _batch() -> list[np.ndarray]:
    """Mixed lengths (300 is longer than the Chronos T5 zoo model's context) and magnitudes, and
    every kind of gap: inside the context, leading, and a missing last value."""
    rows = [_prices(60, 1), _prices(150, 2, start=30_000.0), _prices(300, 3)]
    rows[1][[20, 21, 90]] = np.nan
    rows[2][:5] = np.nan
    rows[2][-1] = np.nan
    return rows


def test_quantiles_are_sorted_shaped_and_finite(model: Forecaster) -> None:
    rows = _batch()
    fc = model.forecast(rows, HORIZON, LEVELS, seeds=SEEDS)
    assert fc.model == model.name
    assert fc.quantile_levels == tuple(sorted(LEVELS))
    assert fc.mean.shape == (3, HORIZON) and fc.quantiles.shape == (3, HORIZON, len(LEVELS))
    assert np.isfinite(fc.mean).all() and np.isfinite(fc.quantiles).all()
    assert (np.diff(fc.quantiles, axis=-1) >= 0).all()
    np.testing.assert_array_equal(fc.last_values, [rows[0][-1], rows[1][-1], rows[2][-2]])  # last finite value


def test_missing_values_with_covariates_of_the_same_bars(model: Forecaster) -> None:
    """A leading NaN and a missing last value keep the row's length: covariates of the same bars
    are accepted (models without covariates ignore them)."""
    row = _batch()[2]
    volume = np.random.default_rng(4).lognormal(3.0, 1.0, row.size)
    fc = model.forecast([row], HORIZON, LEVELS, covariates=[{"volume": volume}], seeds=[1])
    assert np.isfinite(fc.quantiles).all()
    np.testing.assert_array_equal(fc.last_values, [row[-2]])


@pytest.mark.parametrize("horizon", [0, -1, 2.5, True])
def test_a_horizon_that_is_not_a_positive_integer_is_an_input_error(model: Forecaster, horizon: object) -> None:
    with pytest.raises(InputError, match="positive integer") as err:
        model.forecast(_batch(), horizon)
    assert err.value.field == "horizon"


def test_a_horizon_past_max_horizon_is_an_input_error_naming_the_limit(model: Forecaster) -> None:
    with pytest.raises(InputError, match=f"exceeds {model.name}'s max_horizon {model.max_horizon}") as err:
        model.forecast(_batch(), model.max_horizon + 1)
    assert err.value.field == "horizon"


def test_a_seed_fixes_the_forecast(model: Forecaster) -> None:
    rows = _batch()
    first = model.forecast(rows, HORIZON, LEVELS, seeds=SEEDS)
    again = model.forecast(rows, HORIZON, LEVELS, seeds=SEEDS)
    np.testing.assert_array_equal(again.mean, first.mean)
    np.testing.assert_array_equal(again.quantiles, first.quantiles)
    if model.stochastic:  # another seed, other sample paths
        other = model.forecast(rows, HORIZON, LEVELS, seeds=[s + 100 for s in SEEDS])
        assert not np.array_equal(other.quantiles, first.quantiles)


def test_batching_gives_each_row_its_own_forecast(model: Forecaster) -> None:
    """A row's forecast depends on its context and seed alone, not on the rest of the batch or its
    place in it (up to float32 noise of padded batches)."""
    rows = _batch()
    batch = model.forecast(rows[::-1], HORIZON, LEVELS, seeds=SEEDS[::-1])
    for i, (row, seed) in enumerate(zip(rows[::-1], SEEDS[::-1], strict=True)):
        alone = model.forecast([row], HORIZON, LEVELS, seeds=[seed])
        scale = 1e-4 * abs(alone.last_values[0])
        np.testing.assert_allclose(alone.quantiles[0], batch.quantiles[i], rtol=1e-4, atol=scale)
        np.testing.assert_allclose(alone.mean[0], batch.mean[i], rtol=1e-4, atol=scale)
