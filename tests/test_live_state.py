"""The live calibration state: a live forecast gets exactly what the walk-forward would give the next
row (members recalibrated, learned weights, the ensemble recalibrated), it survives a save/load round
trip, and `fmtrade calibrate` feeds `fmtrade forecast` end to end."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from fmtrade.calibration import Conformal, Outcomes
from fmtrade.ensemble import ENSEMBLE_NAME, EnsembleResult, combine
from fmtrade.errors import InputError
from fmtrade.live_state import LiveState, apply_live_state, learn_state
from fmtrade.models.base import Forecast
from fmtrade.walkforward import WalkForward
from tests.conftest import run_cli

LEVELS = (0.05, 0.1, 0.5, 0.9, 0.95)
HORIZON = 3


def _members(rows: int, seed: int = 0) -> tuple[dict[str, Forecast], np.ndarray]:
    """Two members of the same truth N(last, 1%): ``narrow`` says 0.3%, ``wide`` 3% (both miscalibrated)."""
    rng = np.random.default_rng(seed)
    last = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, rows)))
    realised = last[:, None] * (1 + rng.normal(0, 0.01, (rows, HORIZON)))
    mean = np.repeat(last[:, None], HORIZON, axis=1)
    out = {}
    for name, sigma, bias in (("narrow", 0.003, 0.0), ("wide", 0.03, 0.004)):
        q = last[:, None, None] * (1 + bias + sigma * norm.ppf(LEVELS))[None, None, :] * np.ones((1, HORIZON, 1))
        out[name] = Forecast(name, mean * (1 + bias), q, LEVELS, last)
    return out, realised


def _take(fc: Forecast, rows: slice | list[int]) -> Forecast:
    return Forecast(fc.model, fc.mean[rows], fc.quantiles[rows], fc.quantile_levels, fc.last_values[rows])


@pytest.mark.parametrize("calibrate_ensemble", [False, True])
def test_live_forecast_gets_what_the_walk_forward_gives_the_next_row(calibrate_ensemble: bool) -> None:
    rows = 80
    members, realised = _members(rows + 1)
    walk = WalkForward(
        calibrated=frozenset({"narrow"}), ensemble={"narrow": 1.0, "wide": 1.0},
        calibrate_ensemble=calibrate_ensemble, conformal=Conformal(window=50, min_history=10),
    )  # fmt: skip
    # Rows 0..79 on a grid; row 80 is issued after every one of their targets is known.
    issued = np.r_[np.arange(rows), rows + HORIZON]
    outcomes_all = Outcomes(issued, issued + HORIZON, realised)
    expected = walk.apply(members, outcomes_all)

    past = {name: _take(fc, slice(0, rows)) for name, fc in members.items()}
    state = learn_state(walk, past, Outcomes.on_grid(np.arange(rows), HORIZON, realised[:rows]), "2023-01-01T00:00Z")
    live = {name: _take(fc, [rows]) for name, fc in members.items()}
    raw = EnsembleResult(combine(live, {"narrow": 1.0, "wide": 1.0}), live, {"narrow": 0.5, "wide": 0.5}, {})
    got = apply_live_state(LiveState({"BTCUSDT": state}), "BTCUSDT", raw, {"narrow": 1.0, "wide": 1.0})

    np.testing.assert_allclose(got.members["narrow"].quantiles[0], expected["narrow"].quantiles[rows], rtol=1e-12)
    np.testing.assert_array_equal(got.members["wide"].quantiles, live["wide"].quantiles)  # not flagged: raw
    np.testing.assert_allclose(got.ensemble.quantiles[0], expected[ENSEMBLE_NAME].quantiles[rows], rtol=1e-12)
    assert got.members["narrow"].quantiles[0, :, 0].max() < live["narrow"].quantiles[0, :, 0].min()  # widened
    assert got.weights["narrow"] > 0.5  # the calibrated member scores better than the biased wide one
    assert got.calibration == {
        "asof": "2023-01-01T00:00Z", "models": ["narrow"], "learned_weights": True, "ensemble": calibrate_ensemble,
    }  # fmt: skip


def test_state_leaves_unknown_symbols_steps_and_levels_raw(tmp_path) -> None:
    members, realised = _members(60)
    walk = WalkForward(calibrated=frozenset({"narrow"}), ensemble={"narrow": 1.0, "wide": 1.0})
    walk = replace(walk, conformal=Conformal(window=40, min_history=10))
    state = learn_state(walk, members, Outcomes.on_grid(np.arange(60), HORIZON, realised), "2023-06-01T00:00:00Z")
    path = tmp_path / "live-state.json"
    LiveState({"BTCUSDT": state}).save(path)
    loaded = LiveState.load(path)
    np.testing.assert_array_equal(loaded.symbols["BTCUSDT"].shifts["narrow"], state.shifts["narrow"])

    live = {"narrow": _take(members["narrow"], [0])}
    raw = EnsembleResult(live["narrow"], live, {"narrow": 1.0}, {})
    assert apply_live_state(loaded, "ETHUSDT", raw, {"narrow": 1.0}) is raw  # no state for this symbol
    before = pd.Timestamp("2023-05-31T23:00:00Z")  # a forecast from bars before the state's last one
    assert apply_live_state(loaded, "BTCUSDT", raw, {"narrow": 1.0}, at=before) is raw  # never the future
    assert apply_live_state(loaded, "BTCUSDT", raw, {"narrow": 1.0}, at=before + pd.Timedelta(hours=1)) is not raw

    # A longer horizon and other levels: only the steps and level pairs the state holds move.
    levels = (0.2, 0.5, 0.8, 0.9, 0.1)
    order = sorted(levels)
    longer = Forecast("narrow", np.full((1, 5), 100.0), np.tile(np.linspace(99, 101, 5), (1, 5, 1)), order, [100.0])
    got = apply_live_state(loaded, "BTCUSDT", EnsembleResult(longer, {"narrow": longer}, {}, {}), {"narrow": 1.0})
    q = got.members["narrow"].quantiles[0]
    np.testing.assert_array_equal(q[HORIZON:], longer.quantiles[0, HORIZON:])  # past the state's horizon
    np.testing.assert_array_equal(q[:, [1, 3]], longer.quantiles[0][:, [1, 3]])  # 0.2/0.8: not in the state
    assert (q[:HORIZON, 0] < longer.quantiles[0, :HORIZON, 0]).all()  # 0.1/0.9 widened

    path.write_text(json.dumps({"BTCUSDT": {"asof": "x"}}))
    with pytest.raises(InputError, match="live_state"):
        LiveState.load(path)
    with pytest.raises(InputError, match="fmtrade calibrate"):
        LiveState.load(tmp_path / "missing.json")


def test_calibrate_then_forecast_end_to_end(market_store, capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FMTRADE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FMTRADE_STORE", str(market_store.root))
    models = "random-walk,naive,theta"
    common = ["--symbol", "AAAUSDT", "--category", "linear", "--models", models, "--context", "128", "--json"]

    def cli(*argv: str) -> dict:
        code, out, err = run_cli(list(argv), capsys)
        assert code == 0, err
        return json.loads(out)

    learned = cli("calibrate", "--symbols", "AAAUSDT", *common[2:], "--windows", "60")
    [row] = learned["symbols"]
    assert row["symbol"] == "AAAUSDT" and set(row["models_calibrated"]) == set(models.split(","))
    assert abs(sum(row["weights"].values()) - 1) < 1e-3 and not row["failed"]

    doc = cli("forecast", *common)
    assert doc["calibration"]["asof"] == row["asof"] and doc["calibration"]["learned_weights"]
    raw = cli("forecast", *common, "--raw")
    assert raw["calibration"] is None
    assert raw["models"]["naive"]["quantiles"] != doc["models"]["naive"]["quantiles"]  # recalibrated
    assert raw["models"]["naive"]["quantiles"]["0.5"] == doc["models"]["naive"]["quantiles"]["0.5"]  # median kept
