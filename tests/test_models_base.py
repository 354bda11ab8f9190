"""The Forecaster contract: validation, chunking, monotone quantiles, VaR/ES from quantiles."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fmtrade.errors import InputError
from fmtrade.models.base import Forecast, Forecaster, fill_forward, impute_forward, magnitude_exponent


class LastValueSpread(Forecaster):
    """A real (if simple) forecaster: last value, with a spread proportional to the level and step.
    It deliberately returns crossed quantiles to exercise the base class's repair."""

    name = "last-value-spread"
    family = "test"
    max_context = 16
    max_horizon = 10
    min_context = 3
    max_batch_size = 2

    def __init__(self) -> None:
        self.calls: list[int] = []

    def _predict(self, contexts, horizon, quantile_levels, covariates, seeds):
        self.calls.append(len(contexts))
        last = np.array([c[np.isfinite(c)][-1] for c in contexts])
        steps = np.arange(1, horizon + 1)
        z = np.array(quantile_levels) - 0.5
        quant = last[:, None, None] * (1 + 0.01 * steps[None, :, None] * z[None, None, ::-1])  # crossed
        return np.repeat(last[:, None], horizon, axis=1), quant


def test_chunking_truncation_and_monotone_quantiles() -> None:
    model = LastValueSpread()
    contexts = [np.arange(1.0, 40.0), [5.0, np.nan, 6.0, 7.0], [1.0, 2.0, 3.0], [9.0, 9.0, 9.0, 9.0, 9.0]]
    fc = model.forecast(contexts, horizon=4, quantile_levels=[0.9, 0.1, 0.5])
    assert model.calls == [2, 2]
    assert fc.quantile_levels == (0.1, 0.5, 0.9)
    assert fc.mean.shape == (4, 4) and fc.quantiles.shape == (4, 4, 3)
    assert (np.diff(fc.quantiles, axis=-1) >= 0).all()
    np.testing.assert_array_equal(fc.last_values, [39.0, 7.0, 3.0, 9.0])


@pytest.mark.parametrize(
    ("context", "reason"),
    [([], "empty"), ([np.nan, np.nan], "no finite"), ([1.0, np.inf, 2.0], "infinite"), ([1.0, 2.0], "at least 3")],
)
def test_bad_rows_are_named(context, reason) -> None:
    with pytest.raises(InputError, match=rf"contexts\[1\].*{reason}"):
        LastValueSpread().forecast([[1.0, 2.0, 3.0], context], horizon=2)


def test_bad_horizon_and_levels() -> None:
    model = LastValueSpread()
    with pytest.raises(InputError, match="horizon"):
        model.forecast([[1.0, 2.0, 3.0]], horizon=11)
    with pytest.raises(InputError, match="horizon"):
        model.forecast([[1.0, 2.0, 3.0]], horizon=0)
    with pytest.raises(InputError, match="quantiles"):
        model.forecast([[1.0, 2.0, 3.0]], horizon=2, quantile_levels=[0.5, 1.0])
    with pytest.raises(InputError, match="quantiles"):
        model.forecast([[1.0, 2.0, 3.0]], horizon=2, quantile_levels=[0.5, 0.5])


def test_var_and_es_from_a_uniform_return_distribution() -> None:
    # Horizon return uniform on [-10%, +10%]: quantile q -> -0.1 + 0.2 q, exactly linear.
    levels = tuple(np.round(np.arange(0.05, 1.0, 0.05), 2))
    q = np.array([100.0 * (1 - 0.1 + 0.2 * lv) for lv in levels])
    fc = Forecast("u", np.full((1, 1), 100.0), q[None, None, :], levels, np.array([100.0]))
    np.testing.assert_allclose(fc.value_at_risk(0.95), [0.09], atol=1e-12)
    np.testing.assert_allclose(fc.value_at_risk(0.99), [0.098], atol=1e-12)  # linear tail beyond 0.05
    np.testing.assert_allclose(fc.expected_shortfall(0.95), [0.095], atol=1e-9)  # mean of U[-0.1, -0.09]
    assert (fc.expected_shortfall(0.99) >= fc.value_at_risk(0.99)).all()


class RangedLastValue(LastValueSpread):
    """LastValueSpread that only handles mean |value| in [1, 1024) and records what it was given."""

    working_range = (1.0, 1024.0)

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[np.ndarray] = []

    def _predict(self, contexts, horizon, quantile_levels, covariates, seeds):
        self.seen.extend(c.copy() for c in contexts)
        return super()._predict(contexts, horizon, quantile_levels, covariates, seeds)


def test_contexts_outside_the_working_range_are_scaled_by_a_power_of_two() -> None:
    model = RangedLastValue()
    contexts = [[3e-9, np.nan, 5e-9, 4e-9], [2e12, 3e12, 2.5e12], [10.0, 11.0, 12.0], [0.0, 0.0, 0.0]]
    fc = model.forecast(contexts, horizon=3, quantile_levels=[0.1, 0.5, 0.9])
    factors = [np.nanmax(seen / np.array(ctx)) for seen, ctx in zip(model.seen[:3], contexts[:3], strict=True)]
    assert [math.frexp(f)[0] for f in factors] == [0.5, 0.5, 0.5]  # powers of two
    assert factors[2] == 1.0 and (model.seen[3] == 0.0).all()  # in range, or all zero: untouched
    assert all(1.0 <= np.nanmean(np.abs(seen)) < 1024.0 for seen in model.seen[:3])
    np.testing.assert_array_equal(fc.last_values, [4e-9, 2.5e12, 12.0, 0.0])  # the caller's units
    np.testing.assert_array_equal(fc.mean[:, 0], fc.last_values)  # scaled back exactly
    for values in ([3e-9, np.nan, 5e-9], [1e300, 1.7e308], [5e-324, 1e-320], [-1e20, 1e20], [0.5, 2000.0]):
        arr = np.array(values)
        k = magnitude_exponent(arr, model.working_range)
        assert 1.0 <= np.nanmean(np.abs(np.ldexp(arr, k))) < 1024.0, values


def test_take_and_concat_round_trip() -> None:
    fc = LastValueSpread().forecast([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]], horizon=2)
    again = Forecast.concat([fc.take([0]), fc.take([1, 2])])
    np.testing.assert_array_equal(again.quantiles, fc.quantiles)
    np.testing.assert_array_equal(again.last_values, fc.last_values)


def test_impute_forward_drops_leading_nans_fill_forward_keeps_them() -> None:
    context = np.array([np.nan, 1.0, np.nan, np.nan, 4.0, np.nan])
    np.testing.assert_array_equal(impute_forward(context), [1.0, 1.0, 1.0, 4.0, 4.0])
    np.testing.assert_array_equal(fill_forward(context), [np.nan, 1.0, 1.0, 1.0, 4.0, 4.0])


class CovariateRecorder(LastValueSpread):
    """LastValueSpread that takes a covariate and records each row and covariates it was given."""

    covariates = ("volume",)

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[np.ndarray, dict | None]] = []

    def _predict(self, contexts, horizon, quantile_levels, covariates, seeds):
        self.seen.extend(zip(contexts, covariates, strict=True))
        return super()._predict(contexts, horizon, quantile_levels, covariates, seeds)


def test_missing_last_value_keeps_covariates_aligned() -> None:
    """A leading NaN and a missing last value used to shorten the context (leading NaNs dropped
    while filling the last value), and its covariates of the same bars were then refused."""
    model = CovariateRecorder()
    volume = np.arange(10.0, 16.0)
    fc = model.forecast([[np.nan, 2.0, 3.0, np.nan, 5.0, np.nan]], 2, covariates=[{"volume": volume}])
    [(context, covariates)] = model.seen
    np.testing.assert_array_equal(context, [np.nan, 2.0, 3.0, 3.0, 5.0, 5.0])
    np.testing.assert_array_equal(covariates["volume"], volume)
    np.testing.assert_array_equal(fc.last_values, [5.0])
