"""``fmtrade forecast``: the JSON document the CLI and the HTTP API share, failures, bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from fmtrade.config import load_settings
from fmtrade.models.zoo import build_zoo
from tests.conftest import run_cli

KEYS = {
    "symbol", "horizon", "timestamps", "last_value", "models", "ensemble", "weights", "failed", "latency_ms",
    "calibration",
}  # fmt: skip


def _forecast(store, capsys, *args: str) -> tuple[int, str, str]:
    argv = ["forecast", "--symbol", "AAAUSDT", "--category", "linear", "--interval", "60", "--store", store.root]
    return run_cli([*argv, *args], capsys)


def test_forecast_json_schema(market_store, capsys: pytest.CaptureFixture[str]) -> None:
    build_zoo(load_settings(), only=["chronos-bolt-fm-tiny"])
    models = ["random-walk", "theta", "chronos-bolt-fm-tiny"]
    code, out, _ = _forecast(
        market_store, capsys, "--horizon", "12", "--context", "256", "--models", ",".join(models), "--json"
    )
    assert code == 0
    doc = json.loads(out)
    assert set(doc) == KEYS
    assert doc["symbol"] == "AAAUSDT" and doc["horizon"] == 12
    last = market_store.read("AAAUSDT", "60", category="linear").index[-1]
    expected = [(last + pd.Timedelta(hours=k)).strftime("%Y-%m-%dT%H:%M:%SZ") for k in range(1, 13)]
    assert doc["timestamps"] == expected
    assert list(doc["models"]) == models
    for member in doc["models"].values():
        assert set(member) == {"mean", "quantiles", "adapter", "latency_ms", "batch_size"}
        assert list(member["quantiles"]) == ["0.1", "0.5", "0.9"]
        assert all(len(v) == 12 for v in [member["mean"], *member["quantiles"].values()])
        q = np.array(list(member["quantiles"].values()))
        assert (np.diff(q, axis=0) >= 0).all()
    assert set(doc["ensemble"]) == {"mean", "quantiles", "disagreement"}
    assert len(doc["ensemble"]["disagreement"]) == 12
    assert doc["failed"] == {}
    registry = {"random-walk": 1.0, "theta": 1.0, "chronos-bolt-fm-tiny": 0.35}  # packaged models.yaml weights
    total = sum(registry.values())
    assert doc["weights"] == pytest.approx({m: w / total for m, w in registry.items()})
    means = np.array([doc["models"][m]["mean"] for m in models])
    weights = np.array([doc["weights"][m] for m in models])
    assert np.allclose(doc["ensemble"]["mean"], weights @ means)
    # The random walk forecasts no direction: its median is the last close.
    last_close = market_store.read("AAAUSDT", "60", category="linear")["close"].iloc[-1]
    assert np.allclose(doc["models"]["random-walk"]["quantiles"]["0.5"], last_close)


def test_unloadable_model_is_reported_not_fatal(market_store, capsys: pytest.CaptureFixture[str]) -> None:
    models = "random-walk,timesfm-fm-tiny"
    code, out, _ = _forecast(market_store, capsys, "--horizon", "4", "--models", models, "--json")
    assert code == 0
    doc = json.loads(out)
    assert list(doc["models"]) == ["random-walk"]
    assert "fmtrade models build" in doc["failed"]["timesfm-fm-tiny"]
    assert doc["weights"] == {"random-walk": 1.0}


def test_forecast_table(market_store, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _forecast(market_store, capsys, "--horizon", "3", "--models", "random-walk,naive")
    assert code == 0
    assert "ensemble" in out and "random-walk" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--models", "random-walk,gpt-5"], "models: unknown model(s) gpt-5"),
        (["--quantiles", "0.1,1.5"], "quantiles: level 1.5"),
        (["--quantiles", "0.1,x"], "quantiles:"),
        (["--horizon", "0"], "horizon: must be a positive"),
        (["--context", "100000"], "context: 100000 bars requested but only 2500"),
        (["--category", "futures"], "category: 'futures'"),
        (["--interval", "7"], "interval: '7'"),
        (["--symbol", "NOPEUSDT"], "symbol: no linear/60 bars stored for NOPEUSDT"),
        (["--models", "random-walk", "--horizon", "5000"], "horizon: 5000 exceeds random-walk's max_horizon"),
    ],
)
def test_bad_input_exits_2(market_store, capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    code, out, err = _forecast(market_store, capsys, *args, "--json")
    assert code == 2
    assert out == ""
    assert message in err
    assert "Traceback" not in err
