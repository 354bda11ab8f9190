"""Chronos family adapters on tiny zoo checkpoints loaded through chronos-forecasting's own loader."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from chronos import BaseChronosPipeline, Chronos2Pipeline, ChronosBoltPipeline, ChronosPipeline
from safetensors.torch import load_file

from fmtrade.errors import InputError
from fmtrade.models.checkpoints import ModelLoadError
from fmtrade.models.chronos import (
    LONG_HORIZON_FACTOR,
    Chronos2Forecaster,
    ChronosBoltForecaster,
    ChronosForecaster,
    build_chronos2_checkpoint,
    build_chronos_bolt_checkpoint,
    build_chronos_checkpoint,
)

FAMILIES = {
    "chronos": (ChronosForecaster, build_chronos_checkpoint, ChronosPipeline),
    "chronos-bolt": (ChronosBoltForecaster, build_chronos_bolt_checkpoint, ChronosBoltPipeline),
    "chronos2": (Chronos2Forecaster, build_chronos2_checkpoint, Chronos2Pipeline),
}
LEVELS = (0.01, 0.1, 0.5, 0.9, 0.99)  # 0.01 / 0.99 lie outside Bolt's native deciles
OPTIONS = {"chronos": {"num_samples": 8}}  # fewer sample paths than the default 20 keep the tests fast
CONTEXT = {"chronos": 128, "chronos-bolt": 512, "chronos2": 512}  # the token model's encoder is quadratic


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("zoo")
    return {family: builder(root / family, size="tiny", seed=0) for family, (_, builder, _) in FAMILIES.items()}


@pytest.fixture(scope="module")
def forecasters(zoo: dict[str, Path]) -> dict[str, object]:
    return {
        family: cls(f"{family}-fm-tiny", str(zoo[family]), **OPTIONS.get(family, {}))
        for family, (cls, _, _) in FAMILIES.items()
    }


def _prices(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, n)))


def _mixed_batch() -> list[np.ndarray]:
    rows = [_prices(40, 1), _prices(300, 2), _prices(700, 3)]  # 700 > every tiny model's context
    rows[1][100:110] = np.nan  # a gap inside the context
    rows[2][-1] = np.nan  # a missing last value (forward-filled)
    return rows


@pytest.mark.parametrize("family", FAMILIES)
def test_builder_writes_native_seeded_checkpoint(family: str, tmp_path: Path) -> None:
    cls, builder, pipeline_class = FAMILIES[family]
    first = builder(tmp_path / "a", size="tiny", seed=0)
    assert (first / "config.json").is_file() and (first / "model.safetensors").is_file()
    assert isinstance(BaseChronosPipeline.from_pretrained(str(first)), pipeline_class)
    same = load_file(builder(tmp_path / "b", seed=0) / "model.safetensors")
    other = load_file(builder(tmp_path / "c", seed=1) / "model.safetensors")
    weights = load_file(first / "model.safetensors")
    assert all(torch.equal(weights[k], same[k]) for k in weights)
    assert any(not torch.equal(weights[k], other[k]) for k in weights)
    assert 2e5 < sum(t.numel() for t in weights.values()) < 2e6  # "tiny": a few hundred K params
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]  # no temporary leftovers
    with pytest.raises(InputError, match="out_dir"):
        builder(first)
    with pytest.raises(InputError, match="size"):
        builder(tmp_path / "d", size="huge")


@pytest.mark.parametrize("family", FAMILIES)
def test_limits_and_unrolled_horizons(family: str, forecasters: dict) -> None:
    model = forecasters[family]
    assert model.max_context == CONTEXT[family] and model.max_horizon == 64 * LONG_HORIZON_FACTOR
    fc = model.forecast(_mixed_batch(), 70, LEVELS, seeds=[1, 2, 3])  # > 64: the library's autoregressive unrolling
    assert fc.quantiles.shape == (3, 70, len(LEVELS)) and np.isfinite(fc.quantiles).all()


def test_quantiles_outside_native_range_are_clamped(forecasters: dict) -> None:
    fc = forecasters["chronos-bolt"].forecast([_prices(100, 4)], 8, (0.01, 0.1, 0.9, 0.99))
    np.testing.assert_allclose(fc.quantiles[..., 0], fc.quantiles[..., 1], rtol=1e-6)
    np.testing.assert_allclose(fc.quantiles[..., 3], fc.quantiles[..., 2], rtol=1e-6)


def test_chronos_without_seeds_draws_per_series(forecasters: dict) -> None:
    """Without seeds each row is seeded from its own values: a series gets the same answer in any
    batch, and a scaled copy (the same tokens after Chronos's mean scaling) gets other draws. One
    seed shared by every row made the copy's forecast the original's times the scale, draw for draw,
    as equal seeds still do (checked last, so the middle assertion can tell the two apart)."""
    model = forecasters["chronos"]
    base = _prices(128, 11)
    batch = model.forecast([_prices(90, 12), base, 2.0 * base], 10)
    alone = model.forecast([base], 10)
    np.testing.assert_array_equal(alone.mean[0], batch.mean[1])
    np.testing.assert_array_equal(alone.quantiles[0], batch.quantiles[1])
    assert not np.allclose(batch.mean[2], 2.0 * batch.mean[1])
    shared = model.forecast([base, 2.0 * base], 10, seeds=[5, 5])
    np.testing.assert_allclose(shared.mean[1], 2.0 * shared.mean[0], rtol=1e-5)


def test_chronos_encodes_each_context_once(forecasters: dict) -> None:
    # The sample paths share one encoder pass per row; only the decoder runs rows x num_samples.
    model = forecasters["chronos"]
    encoder_rows: list[int] = []
    decoder_rows: set[int] = set()
    hooks = [
        model.module.get_encoder().register_forward_hook(
            lambda m, args, kw, out: encoder_rows.append(kw["input_ids"].size(0)), with_kwargs=True
        ),
        model.module.get_decoder().register_forward_hook(
            lambda m, args, kw, out: decoder_rows.add(out.last_hidden_state.size(0)), with_kwargs=True
        ),
    ]
    try:
        model.forecast(_mixed_batch(), 70, seeds=[1, 2, 3])  # 70 > 64: two unrolled generate calls
    finally:
        for hook in hooks:
            hook.remove()
    assert encoder_rows == [3, 3]
    assert decoder_rows == {3 * OPTIONS["chronos"]["num_samples"]}


def test_chronos2_uses_past_covariates(forecasters: dict) -> None:
    model = forecasters["chronos2"]
    assert model.covariates == ("volume", "funding")
    rows = _mixed_batch()
    rng = np.random.default_rng(5)
    covs = {"volume": rng.lognormal(3.0, 1.0, 300), "funding": rng.normal(0.0, 1e-4, 300), "other": np.ones(300)}
    covs["volume"][5] = np.nan
    plain = model.forecast([rows[1]], 12)
    with_covs = model.forecast([rows[1]], 12, covariates=[covs])
    assert not np.allclose(plain.mean, with_covs.mean)
    # rows with different covariate sets in one batch match the rows forecast alone
    mixed = model.forecast(rows, 12, covariates=[None, covs, {"volume": np.ones(700)}])
    np.testing.assert_allclose(mixed.quantiles[1], with_covs.quantiles[0], rtol=1e-5)
    np.testing.assert_allclose(mixed.quantiles[0], model.forecast([rows[0]], 12).quantiles[0], rtol=1e-5)


def test_offline_hub_id_points_at_the_zoo(monkeypatch: pytest.MonkeyPatch) -> None:
    # what HF_HUB_OFFLINE=1 sets when the process starts
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match="fmtrade models build"):
        ChronosBoltForecaster("chronos-bolt-small", "amazon/chronos-bolt-small")


def test_wrong_family_checkpoint_is_refused(zoo: dict[str, Path]) -> None:
    with pytest.raises(ModelLoadError, match="ChronosBoltPipeline"):
        ChronosForecaster("x", str(zoo["chronos-bolt"]))


def test_num_samples_option_is_checked(zoo: dict[str, Path]) -> None:
    with pytest.raises(InputError, match="num_samples"):
        ChronosForecaster("x", str(zoo["chronos"]), num_samples=1)


@pytest.mark.parametrize("family", ["chronos-bolt", "chronos2"])
def test_bfloat16_runs_close_to_float32(family: str, zoo: dict[str, Path], forecasters: dict) -> None:
    bf16 = FAMILIES[family][0]("x", str(zoo[family]), device="cpu", dtype="bfloat16")
    assert bf16.module.dtype == torch.bfloat16
    rows = _mixed_batch()
    np.testing.assert_allclose(bf16.forecast(rows, 8).mean, forecasters[family].forecast(rows, 8).mean, rtol=0.05)


def test_loading_off_a_terminal_prints_no_progress_bar(zoo: dict[str, Path]) -> None:
    """Where stderr is a log file (Ray workers, Serve replicas) a model load prints no progress bar."""
    load = (
        "from fmtrade.models.chronos import ChronosBoltForecaster; "
        f"ChronosBoltForecaster('bolt', {str(zoo['chronos-bolt'])!r})"
    )
    done = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Loading weights" not in done.stderr, done.stderr[-2000:]
