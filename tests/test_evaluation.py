"""Walk-forward zero-shot evaluation: windows without look-ahead, one batched call per model,
rows for every model + ensemble + random walk, the same rows on Ray, and clean failures on bad input."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
import ray

from fmtrade.errors import InputError
from fmtrade.evaluation import ROW_KEYS, EvalParams, cut_windows, evaluate_symbol
from fmtrade.jobs.ray_runtime import init_ray
from fmtrade.models.baselines import NaiveForecaster, RandomWalkForecaster
from fmtrade.walkforward import WalkForward
from tests.conftest import free_port, run_cli


def _series(n: int, start: str = "2023-01-01") -> pd.Series:
    index = pd.date_range(start, periods=n, freq="h", tz="UTC")
    return pd.Series(np.arange(n, dtype=float) + 100.0, index=index)


def test_windows_have_no_look_ahead() -> None:
    series = _series(200)
    w = cut_windows(series, EvalParams(context=50, horizon=10, stride=20))
    assert len(w) == 8  # origins 50, 70, ..., 190 (190 + 10 = 200 fits)
    for ctx, tgt, origin in zip(w.contexts, w.targets, w.origins, strict=True):
        pos = series.index.get_loc(origin)
        assert np.array_equal(ctx, series.to_numpy()[pos - 50 : pos])
        assert np.array_equal(tgt, series.to_numpy()[pos : pos + 10])
        assert series.index[pos - 1] < origin  # the context ends before the first target bar
    assert list(w.origins[:2]) == [series.index[50], series.index[70]]


def test_gaps_skip_unscorable_windows_only() -> None:
    series = _series(200)
    series.iloc[75] = np.nan  # inside the target of origin 70, inside later contexts
    w = cut_windows(series, EvalParams(context=50, horizon=10, stride=20))
    assert len(w) == 7
    assert series.index[70] not in w.origins
    assert np.isnan(w.contexts).any()  # gaps in contexts are left to the models


def test_start_end_bound_the_scored_targets() -> None:
    series = _series(500)
    start, end = series.index[300], series.index[419]
    w = cut_windows(series, EvalParams(context=100, horizon=10, stride=10, start=start, end=end))
    assert w.origins[0] == start
    assert len(w) == 12  # targets 300-309, ..., 410-419
    assert w.contexts[0][0] == series.iloc[200]  # contexts may reach back before start
    assert w.scored.all()


def test_warmup_windows_precede_start_on_the_same_grid_and_are_not_scored() -> None:
    series = _series(500)
    start, end = series.index[300], series.index[419]
    w = cut_windows(series, EvalParams(context=100, horizon=10, stride=30, start=start, end=end, warmup=5))
    # Five windows back from bar 300 on a 30-bar grid would start at 150; all fit after the context.
    assert list(w.positions[:6]) == [150, 180, 210, 240, 270, 300]
    assert list(w.scored) == [False] * 5 + [True] * 4  # origins 300, 330, 360, 390 are scored
    few = cut_windows(series, EvalParams(context=250, horizon=10, stride=30, start=start, end=end, warmup=5))
    assert few.positions[0] == 270  # only one grid point fits after a 250-bar context


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"context": 1}, "context"),
        ({"horizon": 0}, "horizon"),
        ({"stride": 0}, "stride"),
        ({"context": 2.5}, "context"),
    ],
)
def test_params_validated(kwargs: dict, field: str) -> None:
    with pytest.raises(InputError) as info:
        EvalParams(**kwargs)
    assert info.value.field == field


def test_context_longer_than_data() -> None:
    with pytest.raises(InputError, match="100 bars cannot hold a context of 95 plus a horizon of 10"):
        cut_windows(_series(100), EvalParams(context=95, horizon=10))


class CountingRandomWalk(RandomWalkForecaster):
    """The real random walk, counting how often it is asked to forecast."""

    calls = 0

    def forecast(self, *args, **kwargs):
        type(self).calls += 1
        return super().forecast(*args, **kwargs)


class BrokenModel(NaiveForecaster):
    """Fault injection: a model whose inference crashes."""

    def _predict(self, *args, **kwargs):
        raise RuntimeError("CUDA out of memory")


@pytest.fixture(scope="module")
def closes(market_store) -> pd.Series:
    return market_store.read("AAAUSDT", "60", category="linear")["close"]


def test_evaluate_symbol_rows(closes: pd.Series) -> None:
    params = EvalParams(context=256, horizon=12, stride=48)
    models = {"random-walk": CountingRandomWalk("random-walk"), "naive": NaiveForecaster("naive")}
    walk = WalkForward(calibrated=frozenset({"naive"}), ensemble={"random-walk": 1.0, "naive": 1.0})
    rows = evaluate_symbol("AAAUSDT", closes, models, params, walk)
    assert CountingRandomWalk.calls == 1  # every window in one batched call
    assert [r["model"] for r in rows] == ["random-walk", "naive", "ensemble"]
    windows = len(cut_windows(closes, params))
    for row in rows:
        assert list(row) == list(ROW_KEYS)
        assert row["symbol"] == "AAAUSDT" and row["windows"] == windows
        assert row["mae"] > 0 and row["rmse"] >= row["mae"] and row["wql"] > 0
        assert 0 <= row["coverage_80"] <= row["coverage_90"] <= 1
    rw = rows[0]
    assert rw["directional_accuracy"] is None  # the random walk makes no directional call
    assert (rw["wql_rel_rw"], rw["wql_rel_ci_low"], rw["wql_rel_ci_high"]) == (1.0, 1.0, 1.0)
    assert [r["calibrated"] for r in rows] == [False, True, False]
    for row in rows[1:]:
        assert row["wql_rel_ci_low"] <= row["wql_rel_rw"] <= row["wql_rel_ci_high"]
        assert row["wql_rel_rw"] == pytest.approx(row["wql"] / rw["wql"])
    json.dumps(rows, allow_nan=False)  # strict JSON


def test_ensemble_of_identical_members_is_the_member(closes: pd.Series) -> None:
    params = EvalParams(context=128, horizon=6, stride=96)
    models = {"a": RandomWalkForecaster("a"), "b": RandomWalkForecaster("b")}
    rows = {r["model"]: r for r in evaluate_symbol("AAAUSDT", closes, models, params)}
    for key in ("mae", "rmse", "wql", "coverage_80", "coverage_90"):
        assert rows["ensemble"][key] == pytest.approx(rows["a"][key])


def test_failing_model_is_reported_and_the_rest_scored(closes: pd.Series) -> None:
    params = EvalParams(context=128, horizon=6, stride=96)
    models = {"random-walk": RandomWalkForecaster(), "broken": BrokenModel("broken")}
    rows = {r["model"]: r for r in evaluate_symbol("AAAUSDT", closes, models, params)}
    assert rows["broken"]["windows"] == 0 and rows["broken"]["mae"] is None
    assert "CUDA out of memory" in rows["broken"]["error"]
    assert rows["ensemble"]["mae"] == pytest.approx(rows["random-walk"]["mae"])


def test_horizon_beyond_a_models_max_fails_first(closes: pd.Series) -> None:
    model = RandomWalkForecaster()
    model.max_horizon = 8
    with pytest.raises(InputError, match="horizon: 12 exceeds the horizon of random-walk"):
        evaluate_symbol("AAAUSDT", closes, {"random-walk": model}, EvalParams(context=64, horizon=12))


def _evaluate(store, capsys, *args: str) -> tuple[int, str, str]:
    argv = ["evaluate", "--category", "linear", "--interval", "60", "--store", store.root, "--json"]
    return run_cli([*argv, *args], capsys)


def test_evaluate_cli_rows(market_store, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _evaluate(
        market_store, capsys, "--symbols", "AAAUSDT,BBBUSDT", "--models", "naive",
        "--context", "256", "--horizon", "12", "--stride", "96",
    )  # fmt: skip
    assert code == 0
    rows = json.loads(out)
    assert [(r["symbol"], r["model"]) for r in rows] == [
        (s, m) for s in ("AAAUSDT", "BBBUSDT") for m in ("naive", "random-walk", "ensemble")
    ]
    assert all(set(r) == set(ROW_KEYS) for r in rows)
    assert len({r["windows"] for r in rows}) == 1 and rows[0]["windows"] == (2500 - 256 - 12) // 96 + 1
    # The random walk, added as the anchor, is scored and is an ensemble member; every model is
    # recalibrated by default (the registry's calibrate), the ensemble not (models.calibrate_ensemble).
    assert [r["calibrated"] for r in rows[:3]] == [True, True, False]
    assert rows[1]["wql_rel_rw"] == 1.0
    assert rows[2]["wql"] != pytest.approx(rows[0]["wql"])
    code, out, _ = _evaluate(
        market_store, capsys, "--symbols", "AAAUSDT", "--models", "naive", "--context", "256", "--horizon", "12",
        "--stride", "96", "--no-calibrate",
    )  # fmt: skip
    raw = json.loads(out)
    assert [r["calibrated"] for r in raw] == [False, False, False]
    assert raw[0]["wql"] != pytest.approx(rows[0]["wql"])


def test_evaluate_cli_period(market_store, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _evaluate(
        market_store, capsys, "--symbols", "AAAUSDT", "--models", "random-walk", "--context", "512",
        "--horizon", "24", "--stride", "24", "--start", "2022-02-01", "--end", "2022-02-10T23:00",
    )  # fmt: skip
    assert code == 0
    rows = json.loads(out)
    assert [r["model"] for r in rows] == ["random-walk", "ensemble"]
    assert rows[0]["windows"] == 10  # ten whole days of targets, contexts from January


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--symbols", "NOPEUSDT"], "symbol: no linear/60 bars stored for NOPEUSDT"),
        (["--symbols", "AAAUSDT", "--context", "5000"], "context: AAAUSDT: 2500 bars cannot hold a context of 5000"),
        (["--symbols", "AAAUSDT", "--models", "naive,gpt-5"], "models: unknown model(s) gpt-5"),
        (
            ["--symbols", "AAAUSDT", "--models", "naive", "--context", "64", "--horizon", "2000"],
            "horizon: 2000 exceeds the horizon of",
        ),
        (["--symbols", "AAAUSDT", "--start", "2022-03-01", "--end", "2022-02-01"], "start: "),
        (["--symbols", "AAAUSDT", "--start", "yesterday-ish"], "start: "),
        (["--symbols", "AAAUSDT", "--models", "chronos-fm-tiny"], "fmtrade models build"),
        (["--symbols", "AAAUSDT,"], "--symbols: expected a comma-separated list"),
    ],
)
def test_evaluate_bad_input_exits_2(market_store, capsys, args: list[str], message: str) -> None:
    code, out, err = _evaluate(market_store, capsys, *args)
    assert code == 2
    assert out == ""
    assert message in err
    assert "Traceback" not in err


def test_evaluate_at_an_address_where_no_cluster_answers_exits_2(market_store, capsys) -> None:
    address = f"127.0.0.1:{free_port()}"
    code, out, err = _evaluate(market_store, capsys, "--symbols", "AAAUSDT", "--models", "naive", "--address", address)
    assert (code, out) == (2, "")
    assert err.strip().splitlines() == [f"error: no Ray cluster answers at {address}"]


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    init_ray("local", num_cpus=2)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_evaluate_on_ray_gives_the_rows_of_the_in_process_run(market_store, capsys, local_ray) -> None:
    args = ("--symbols", "AAAUSDT,BBBUSDT", "--models", "naive", "--context", "256", "--horizon", "12",
            "--stride", "96")  # fmt: skip
    code, here, _ = _evaluate(market_store, capsys, *args)
    assert code == 0
    code, on_ray, _ = _evaluate(market_store, capsys, *args, "--address", "local")
    assert code == 0
    assert json.loads(on_ray) == json.loads(here)


@pytest.mark.slow
def test_evaluate_on_ray_reports_a_tasks_input_error_in_one_line(market_store, capsys, local_ray) -> None:
    code, out, err = _evaluate(
        market_store, capsys, "--symbols", "AAAUSDT", "--models", "naive", "--context", "64", "--horizon", "2000",
        "--address", "local",
    )  # fmt: skip
    assert (code, out) == (2, "")
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: horizon: 2000 exceeds the horizon of naive")
