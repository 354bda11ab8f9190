"""Fracast-0 from the pinned ``fracast`` wheel: the release's hashes are checked, its forecasts of a real
BTC series are on the price scale, levels outside 0.1..0.9 follow the documented straight tail, and its
training objective runs the same forward path as its forecasts (so LoRA fine-tuning trains what serves)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fmtrade.config import load_settings
from fmtrade.data.sample import sample_file
from fmtrade.errors import InputError
from fmtrade.models.checkpoints import ModelLoadError
from fmtrade.models.fracast import (
    RELEASE_FILE,
    RELEASE_SHA256,
    FracastForecaster,
    build_fracast_checkpoint,
    bundled_weights,
    verify_release,
)
from fmtrade.models.zoo import build_zoo
from fmtrade.training import LoraParams, TrainingRun, load_for_training, zoo_pretrainer


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fracast_checkpoint(tmp_path_factory.mktemp("zoo") / "fracast-0")


@pytest.fixture(scope="module")
def model(release: Path) -> FracastForecaster:
    return FracastForecaster("fracast-0", str(release), device="cpu")


@pytest.fixture(scope="module")
def btc() -> np.ndarray:
    """The last 2048 hourly BTCUSDT closes of the shipped real sample (December 2023, ~42k)."""
    return pd.read_parquet(sample_file("BTCUSDT"))["close"].to_numpy()[-2048:]


def test_the_zoo_copy_is_the_verified_release(release: Path) -> None:
    verify_release(bundled_weights())  # the installed wheel is the pinned release
    assert sorted(p.name for p in release.iterdir()) == sorted([*RELEASE_SHA256, RELEASE_FILE])
    assert json.loads((release / RELEASE_FILE).read_text())["version"] == "0.1.0"


def test_models_build_copies_the_release_and_never_pretrains_it() -> None:
    settings = load_settings()
    [row] = build_zoo(settings, only=["fracast-0"], post_build=zoo_pretrainer(10.0))
    assert row["status"] == "built" and row["seconds"] < 60  # not ten minutes of pretraining
    verify_release(settings.zoo_dir() / "fracast-0")  # byte for byte the published weights


@pytest.mark.parametrize("name", sorted(RELEASE_SHA256))
def test_a_tampered_copy_of_the_release_is_refused_naming_the_file(name: str, release: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(release, tmp_path / "fracast-0"))
    data = bytearray((copy / name).read_bytes())
    data[-2] ^= 1  # one bit, inside the weights / the config's last value
    (copy / name).write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match=f"{copy / name}: sha256 [0-9a-f]{{64}} is not that of the Fracast-0"):
        FracastForecaster("fracast-0", str(copy), device="cpu")


def test_forecasts_of_a_real_series_are_on_its_price_scale(model: FracastForecaster, btc: np.ndarray) -> None:
    fc = model.forecast([btc, btc[-300:]], 24)
    last = btc[-1]
    assert fc.quantiles.shape == (2, 24, 9)
    assert (np.diff(fc.quantiles, axis=-1) >= 0).all()
    assert np.abs(fc.median / last - 1).max() < 0.05  # a day ahead: within 5% of the last price
    spread = (fc.quantile(0.9) - fc.quantile(0.1)) / last
    assert (spread > 0).all() and spread.max() < 0.2
    assert (spread[:, -1] > spread[:, 0]).all()  # uncertainty grows with the horizon
    np.testing.assert_array_equal(fc.mean, fc.median)  # documented: the mean is the native median


def test_levels_outside_the_native_range_extend_the_outer_slope(model: FracastForecaster, btc: np.ndarray) -> None:
    native = model.forecast([btc], 60, (0.1, 0.2, 0.8, 0.9)).quantiles[0]  # 60 > 48: autoregressive
    tails = model.forecast([btc], 60, (0.01, 0.05, 0.95, 0.99)).quantiles[0]
    q1, q2, q8, q9 = native.T
    np.testing.assert_allclose(tails[:, 1], q1 - 0.5 * (q2 - q1), rtol=1e-12)
    np.testing.assert_allclose(tails[:, 2], q9 + 0.5 * (q9 - q8), rtol=1e-12)
    assert (tails[:, 0] < tails[:, 1]).all() and (tails[:, 3] > tails[:, 2]).all()


def test_a_small_quiet_price_is_forecast_like_its_in_range_twin(model: FracastForecaster, btc: np.ndarray) -> None:
    """At ~0.001 a context that moves under 1% would hit the package's 1e-5 span floor; the working range
    forecasts it as its power-of-two twin instead."""
    quiet = 1 + (btc[-200:] / btc[-1] - 1) / 10  # ~1.0, moving ~0.3%
    tiny = model.forecast([quiet * 2.0**-10], 12).quantiles[0] * 2.0**10
    np.testing.assert_allclose(tiny, model.forecast([quiet], 12).quantiles[0], rtol=1e-6)


def test_bfloat16_is_refused(release: Path) -> None:
    with pytest.raises(ModelLoadError, match="fracast computes in float32 only"):
        FracastForecaster("fracast-0", str(release), device="cpu", dtype="bfloat16")


def test_the_objective_runs_the_forecast_path(release: Path, btc: np.ndarray) -> None:
    """The training forward on a window gives the native median the forecast gives for its context."""
    forecaster = load_for_training("fracast", str(release))
    objective = forecaster.objective()
    context, horizon = objective.geometry.context, objective.geometry.horizon
    assert (context, horizon) == (512, 48)
    window = btc[-(context + horizon) :]
    loc, span = window[:context].min(), window[:context].max() - window[:context].min()
    values = torch.zeros(1, 1, 2048)
    values[0, 0, -context:] = torch.from_numpy((window[:context] - loc) / span)
    valid = torch.zeros(1, 1, 2048, dtype=torch.bool)
    valid[0, 0, -context:] = True
    with torch.no_grad():
        median = forecaster.module(values, valid)[0, :, 4].numpy() * span + loc
    expected = forecaster.forecast([window[:context]], horizon).median[0]
    np.testing.assert_allclose(median, expected, rtol=1e-5)
    with torch.no_grad():
        loss = objective.loss(forecaster.module, torch.from_numpy(np.stack([window, window * 2])))
    assert torch.isfinite(loss) and 0 < float(loss) < 1  # normalised pinball: scale-free, small


def test_lora_trains_only_the_adapter_and_reloads_merged(release: Path, btc: np.ndarray, tmp_path: Path) -> None:
    run = TrainingRun(load_for_training("fracast", str(release)), lora=LoraParams(rank=2), lr=1e-2)
    frozen = {n: p.detach().clone() for n, p in run.net.named_parameters() if not p.requires_grad}
    assert 0 < run.trainable_params < 0.1 * run.total_params
    starts = range(0, 2048 - 560, 64)
    windows = torch.from_numpy(np.stack([btc[s : s + 560] for s in starts]))
    before = run.eval_loss([windows])
    for _ in range(5):
        run.train_step(windows)
    assert run.eval_loss([windows]) < before
    assert all(torch.equal(p, frozen[n]) for n, p in run.net.named_parameters() if n in frozen)
    adapter = run.save(tmp_path / "adapter")
    context = [btc[-512:]]
    tuned = run.forecaster.forecast(context, 24)
    merged = FracastForecaster("tuned", str(release), device="cpu", adapter=str(adapter)).forecast(context, 24)
    np.testing.assert_allclose(merged.quantiles, tuned.quantiles, rtol=1e-5)
    base = FracastForecaster("base", str(release), device="cpu").forecast(context, 24)
    assert not np.allclose(base.quantiles, tuned.quantiles)


def test_unknown_options_are_input_errors(release: Path) -> None:
    with pytest.raises(InputError, match="unknown option\\(s\\) for fracast: num_samples"):
        FracastForecaster("fracast-0", str(release), device="cpu", num_samples=8)
