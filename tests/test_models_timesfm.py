"""TimesFM 2.5 adapter: zoo checkpoints through the package's own loader and forecast API."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from timesfm import TimesFM_2p5_200M_torch

from fmtrade.errors import InputError
from fmtrade.models.checkpoints import ModelLoadError
from fmtrade.models.timesfm import (
    DEFINITION_KEY,
    TimesFM2p5,
    TimesFMForecaster,
    build_timesfm_checkpoint,
)

LEVELS = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_timesfm_checkpoint(tmp_path_factory.mktemp("zoo") / "timesfm-fm-tiny", size="tiny", seed=0)


@pytest.fixture(scope="module")
def model(tiny: Path) -> TimesFMForecaster:
    return TimesFMForecaster("timesfm-fm-tiny", str(tiny), device="cpu")


def _series(n: int, seed: int, start: float = 100.0) -> np.ndarray:
    return start * np.exp(np.cumsum(np.random.default_rng(seed).normal(0, 0.01, n)))


def test_zoo_checkpoint_round_trips_through_the_package_loader(tiny: Path) -> None:
    config = json.loads((tiny / "config.json").read_text())
    assert config[DEFINITION_KEY]["stacked_transformers"]["num_layers"] == 2
    loaded = TimesFM2p5.from_pretrained(str(tiny), torch_compile=False)
    assert isinstance(loaded, TimesFM_2p5_200M_torch)  # the package's wrapper, with its compile/forecast
    assert loaded.model.md == 64 and loaded.model.x == 2
    on_disk = load_file(tiny / "model.safetensors")
    state = loaded.model.state_dict()
    assert state.keys() == on_disk.keys()
    assert all(torch.equal(state[k].cpu(), on_disk[k]) for k in state)
    n_params = sum(p.numel() for p in loaded.model.parameters())
    assert 300_000 < n_params < 2_500_000


def test_builder_is_seeded_and_refuses_to_overwrite(tmp_path: Path, tiny: Path) -> None:
    again = build_timesfm_checkpoint(tmp_path / "a", seed=0)
    other = build_timesfm_checkpoint(tmp_path / "b", seed=1)
    base, same, diff = (load_file(p / "model.safetensors") for p in (tiny, again, other))
    assert all(torch.equal(base[k], same[k]) for k in base)
    assert not all(torch.equal(base[k], diff[k]) for k in base)
    with pytest.raises(InputError, match="out_dir"):
        build_timesfm_checkpoint(again)


def test_inner_nans_are_linearly_interpolated_by_the_package(model: TimesFMForecaster) -> None:
    ctx = _series(200, 4)
    gappy = ctx.copy()
    gappy[100:103] = np.nan
    filled = gappy.copy()
    filled[100:103] = np.interp([100, 101, 102], [99, 103], [ctx[99], ctx[103]])
    a = model.forecast([gappy], 12)
    b = model.forecast([filled], 12)
    np.testing.assert_allclose(a.quantiles, b.quantiles, rtol=1e-6)


def test_levels_interpolate_the_native_quantiles(model: TimesFMForecaster) -> None:
    ctx = [_series(256, 5), _series(100, 6)]
    native = model.forecast(ctx, 16, quantile_levels=(0.1, 0.2, 0.5, 0.8, 0.9))
    asked = model.forecast(ctx, 16, quantile_levels=(0.05, 0.15, 0.5))
    q10, q20 = native.quantiles[..., 0], native.quantiles[..., 1]
    np.testing.assert_allclose(asked.quantiles[..., 1], (q10 + q20) / 2, rtol=1e-6)
    np.testing.assert_allclose(asked.quantiles[..., 0], q10 - (q20 - q10) / 2, rtol=1e-6)  # linear tail
    np.testing.assert_allclose(asked.quantiles[..., 2], native.quantiles[..., 2], rtol=1e-6)


def test_limits_follow_the_quantile_head_and_context_limit(model: TimesFMForecaster) -> None:
    assert model.max_horizon == 1024  # the continuous quantile head's length
    assert model.max_context == 16384 - 1024


def test_offline_hub_id_points_at_the_zoo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(ModelLoadError, match="fmtrade models build"):
        TimesFMForecaster("timesfm-2.5-200m", "google/timesfm-2.5-200m-pytorch", device="cpu")
