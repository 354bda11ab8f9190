"""Ensemble: Vincentization by hand, failing and slow members dropped, learned weights."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from fmtrade.calibration import Outcomes
from fmtrade.ensemble import Ensemble, EnsembleError, OnlineWeights, combine, normalise_weights, walk_forward_ensemble
from fmtrade.errors import InputError
from fmtrade.models.base import Forecast
from fmtrade.models.baselines import AutoETSForecaster, NaiveForecaster, RandomWalkForecaster, SeasonalNaiveForecaster

LEVELS = (0.1, 0.5, 0.9)


class BrokenForecaster(RandomWalkForecaster):
    """Fault injection: a member whose model call raises."""

    def _predict(self, *args, **kwargs):
        raise RuntimeError("device lost")


class SlowForecaster(RandomWalkForecaster):
    """Fault injection: a member that answers only after ``delay_s``."""

    delay_s = 1.5

    def _predict(self, *args, **kwargs):
        time.sleep(self.delay_s)
        return super()._predict(*args, **kwargs)


def _contexts(n_rows: int = 3, length: int = 200) -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [100 * np.exp(np.cumsum(rng.normal(0, 0.01, size=length))) for _ in range(n_rows)]


def _forecast(name: str, quantiles, mean, last=(10.0,)) -> Forecast:
    return Forecast(name, np.array(mean), np.array(quantiles), LEVELS, np.array(last))


def test_combine_vincentizes_by_hand() -> None:
    a = _forecast("a", [[[9.0, 10.0, 11.0]]], [[10.0]])
    b = _forecast("b", [[[5.0, 14.0, 20.0]]], [[15.0]])
    out = combine({"a": a, "b": b}, {"a": 3.0, "b": 1.0})
    assert out.model == "ensemble"
    np.testing.assert_allclose(out.quantiles[0, 0], [0.75 * 9 + 0.25 * 5, 0.75 * 10 + 0.25 * 14, 0.75 * 11 + 0.25 * 20])
    assert out.mean[0, 0] == pytest.approx(0.75 * 10 + 0.25 * 15)
    # Weighted std of medians 10 and 14 around 11: sqrt(0.75 * 1 + 0.25 * 9).
    assert out.extras["disagreement"][0, 0] == pytest.approx(np.sqrt(0.75 + 2.25))
    assert out.extras["uncertainty"][0, 0] == pytest.approx(out.quantiles[0, 0, 2] - out.quantiles[0, 0, 0])


def test_combine_of_one_member_is_that_member_as_the_general_path_computes_it() -> None:
    rng = np.random.default_rng(3)
    quantiles = np.sort(rng.normal(100.0, 2.0, (4, 6, 3)), axis=-1)
    member = Forecast("m", quantiles[..., 1] + 0.5, quantiles, (0.2, 0.5, 0.8), np.full(4, 100.0))
    alone = combine({"m": member}, {"m": 0.3})
    # Two identical members take the general (weighted-average) path to the same answer.
    copy = Forecast("n", member.mean, quantiles, member.quantile_levels, member.last_values)
    twin = combine({"m": member, "n": copy})
    assert alone.model == "ensemble"
    for field in ("mean", "quantiles", "last_values"):
        np.testing.assert_allclose(getattr(alone, field), getattr(twin, field))
    np.testing.assert_array_equal(alone.extras["disagreement"], np.zeros((4, 6)))
    np.testing.assert_allclose(alone.extras["uncertainty"], twin.extras["uncertainty"])
    # Extended beyond the stored 0.2/0.8 levels: wider than their spread.
    assert (alone.extras["uncertainty"] > quantiles[..., 2] - quantiles[..., 0]).all()


def test_combine_rejects_mismatched_members_and_bad_weights() -> None:
    a = _forecast("a", [[[9.0, 10.0, 11.0]]], [[10.0]])
    other_levels = Forecast("b", np.array([[10.0]]), np.array([[[9.0, 11.0]]]), (0.2, 0.8), np.array([10.0]))
    with pytest.raises(InputError, match="forecasts.b"):
        combine({"a": a, "b": other_levels})
    with pytest.raises(InputError, match="forecasts.c"):
        combine({"a": a, "c": _forecast("c", [[[9.0, 10.0, 11.0]]], [[10.0]], last=(11.0,))})
    with pytest.raises(InputError, match="weights.a"):
        combine({"a": a}, {"a": -1.0})
    with pytest.raises(InputError, match="weights.a"):
        combine({"a": a}, {"b": 1.0})
    with pytest.raises(InputError, match="weights"):
        normalise_weights({"a": 0.0, "b": 0.0}, ["a", "b"])


def test_equal_members_give_the_member_back() -> None:
    contexts = _contexts()
    ens = Ensemble({"rw1": RandomWalkForecaster("rw1"), "rw2": RandomWalkForecaster("rw2")}, {"rw1": 3, "rw2": 1})
    result = ens.forecast(contexts, 12, LEVELS)
    member = RandomWalkForecaster("random-walk").forecast(contexts, 12, LEVELS)
    np.testing.assert_allclose(result.ensemble.quantiles, member.quantiles, rtol=1e-12)
    np.testing.assert_allclose(result.ensemble.mean, member.mean, rtol=1e-12)
    np.testing.assert_allclose(result.ensemble.extras["disagreement"], 0.0, atol=1e-9)
    assert result.failed == {} and sum(result.weights.values()) == pytest.approx(1.0)


def test_failing_and_slow_members_are_dropped_and_weights_renormalised() -> None:
    members = {
        "random-walk": RandomWalkForecaster("random-walk"),
        "naive": NaiveForecaster("naive"),
        "broken": BrokenForecaster("broken"),
        "slow": SlowForecaster("slow"),
    }
    ens = Ensemble(members, {"random-walk": 2.0, "naive": 1.0, "broken": 5.0, "slow": 5.0})
    started = time.perf_counter()
    result = ens.forecast(_contexts(), 6, LEVELS, time_budget_s=0.5)
    assert time.perf_counter() - started < SlowForecaster.delay_s  # did not wait for the slow member
    assert set(result.members) == {"random-walk", "naive"}
    assert result.failed["broken"] == "RuntimeError: device lost"
    assert "time budget" in result.failed["slow"]
    assert result.weights == pytest.approx({"random-walk": 2 / 3, "naive": 1 / 3})
    expected = combine(result.members, {"random-walk": 2, "naive": 1})
    np.testing.assert_allclose(result.ensemble.quantiles, expected.quantiles)


def test_ensemble_fails_only_when_no_member_answered() -> None:
    ens = Ensemble({"b1": BrokenForecaster("b1"), "ets": AutoETSForecaster("ets")})
    with pytest.raises(EnsembleError) as info:
        ens.forecast([np.array([1.0, 2.0, 3.0, 2.0, 1.0])], 4, LEVELS)  # too short for AutoETS (8 values)
    assert set(info.value.failed) == {"b1", "ets"}
    assert "b1: RuntimeError: device lost" in str(info.value)
    assert "ets: InputError: contexts[0]" in str(info.value)
    with pytest.raises(InputError, match="quantiles"):
        ens.forecast(_contexts(), 4, (0.5, 1.5))


def _seasonal_windows(n_windows: int, rows: int = 4, season: int = 24, length: int = 96, horizon: int = 24):
    """Prices with a strong daily cycle: the seasonal naive is clearly better than a random walk."""
    rng = np.random.default_rng(0)
    t = np.arange(n_windows * horizon + length)
    for w in range(n_windows):
        contexts, realised = [], []
        for r in range(rows):
            series = 100 * np.exp(0.05 * np.sin(2 * np.pi * (t + 5 * r) / season) + rng.normal(0, 0.002, t.size))
            start = w * horizon
            contexts.append(series[start : start + length])
            realised.append(series[start + length : start + length + horizon])
        yield contexts, np.array(realised)


def test_learned_weights_move_toward_the_better_member(tmp_path) -> None:
    members = {"random-walk": RandomWalkForecaster("random-walk"), "seasonal": SeasonalNaiveForecaster("seasonal")}
    learner = OnlineWeights(decay=0.5)
    ens = Ensemble(members, learner=learner)
    history = []
    for contexts, realised in _seasonal_windows(4):
        result = ens.forecast(contexts, 24, LEVELS)
        history.append(result.weights["seasonal"])
        weights = ens.update(result.members, realised)
        assert sum(weights.values()) == pytest.approx(1.0)
    assert history[0] == 0.0  # no record yet: the random walk holds all the weight
    assert history[1] > 0.99 and history[-1] > 0.99  # the seasonal naive is far better here
    assert learner.losses["seasonal"] < learner.losses["random-walk"]

    path = tmp_path / "state" / "weights.json"
    learner.save(path)
    assert json.loads(path.read_text())["updates"] == {"random-walk": 4, "seasonal": 4}
    loaded = OnlineWeights.load(path)
    assert loaded.weights(members) == pytest.approx(learner.weights(members))
    assert loaded.decay == learner.decay and loaded.eta == learner.eta and loaded.losses == learner.losses


def test_online_weights_formula_fallbacks_and_state_errors(tmp_path) -> None:
    learner = OnlineWeights(eta=20.0, losses={"a": 0.010, "b": 0.011})
    # b is 10% worse than the best: exp(-20 * 0.1) = e^-2 of a's weight.
    assert learner.weights(["a", "b"]) == pytest.approx({"a": 1 / (1 + np.exp(-2)), "b": np.exp(-2) / (1 + np.exp(-2))})
    assert learner.weights(["a", "b", "new"])["new"] == 0.0  # no record: no weight while others have one
    fresh = OnlineWeights()
    assert fresh.weights(["x", "random-walk"]) == {"x": 0.0, "random-walk": 1.0}  # the documented fallback
    assert fresh.weights(["x", "y"], prior={"x": 3.0, "y": 1.0}) == pytest.approx({"x": 0.75, "y": 0.25})
    fresh.observe({"x": float("nan"), "y": 0.02})
    assert fresh.losses == {"y": 0.02} and fresh.updates == {"y": 1}
    with pytest.raises(InputError, match="decay"):
        OnlineWeights(decay=1.0)
    with pytest.raises(InputError, match="eta"):
        OnlineWeights(eta=-1.0)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="weights_state"):
        OnlineWeights.load(bad)
    with pytest.raises(InputError, match="weights_state"):
        OnlineWeights.load(tmp_path / "missing.json")
    with pytest.raises(InputError, match="learner"):
        Ensemble({"rw": RandomWalkForecaster("rw")}).update({}, np.ones((1, 1)))


def test_walk_forward_weights_move_to_the_better_member_from_realised_rows_only() -> None:
    rows = list(_seasonal_windows(12, rows=1))
    contexts = [c[0] for c, _ in rows]
    realised = np.concatenate([r for _, r in rows])
    members = {
        name: model.forecast(contexts, 24, LEVELS)
        for name, model in (("random-walk", RandomWalkForecaster()), ("seasonal", SeasonalNaiveForecaster("seasonal")))
    }
    # Issued every 24 bars with a 24-bar horizon: row i learns from rows 0..i-1.
    outcomes = Outcomes.on_grid(np.arange(12) * 24, 24, realised)
    ensemble, weights = walk_forward_ensemble(members, outcomes, OnlineWeights())
    np.testing.assert_array_equal(weights[0], [1.0, 0.0])  # nothing realised yet: the random walk
    np.testing.assert_array_equal(ensemble.quantiles[0], members["random-walk"].quantiles[0])
    assert weights[1, 1] > 0.99 and weights[-1, 1] > 0.99  # one realised row shows the seasonal is better
    assert np.allclose(weights.sum(axis=1), 1.0)
    # A row issued before any target is known keeps the fallback, whatever comes later.
    slow = Outcomes.on_grid(np.arange(12) * 24, 24 * 13, realised)
    _, none_known = walk_forward_ensemble(members, slow, OnlineWeights())
    np.testing.assert_array_equal(none_known[:, 0], 1.0)
