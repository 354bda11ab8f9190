"""Native Lag-Llama: checkpoint format, NLL training objective, seeded sample-path forecasts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from scipy import stats

from fmtrade.errors import InputError
from fmtrade.models.checkpoints import ModelLoadError
from fmtrade.models.lagllama import (
    LagLlamaConfig,
    LagLlamaForecaster,
    LagLlamaModel,
    build_lagllama_checkpoint,
    student_t_polar,
)

LEVELS = (0.05, 0.1, 0.5, 0.9, 0.95)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_lagllama_checkpoint(tmp_path_factory.mktemp("zoo") / "lagllama-fm-tiny", size="tiny", seed=0)


@pytest.fixture(scope="module")
def model(tiny: Path) -> LagLlamaForecaster:
    return LagLlamaForecaster("lagllama-fm-tiny", str(tiny), device="cpu", num_samples=50)


def _series(n: int, seed: int, start: float = 100.0) -> np.ndarray:
    return start * np.exp(np.cumsum(np.random.default_rng(seed).normal(0, 0.01, n)))


def test_zoo_checkpoint_round_trips_through_from_pretrained(tiny: Path, tmp_path: Path) -> None:
    config = json.loads((tiny / "config.json").read_text())
    assert config["model_type"] == "lag-llama" and config["lags"][-1] == 672
    loaded = LagLlamaModel.from_pretrained(tiny)
    on_disk = load_file(tiny / "model.safetensors")
    assert loaded.state_dict().keys() == on_disk.keys()
    assert all(torch.equal(loaded.state_dict()[k], on_disk[k]) for k in on_disk)
    assert 100_000 < sum(p.numel() for p in loaded.parameters()) < 2_000_000
    again = LagLlamaModel.from_pretrained(loaded.save_pretrained(tmp_path / "copy"))
    assert again.config == loaded.config
    other = load_file(build_lagllama_checkpoint(tmp_path / "seed1", seed=1) / "model.safetensors")
    assert not all(torch.equal(on_disk[k], other[k]) for k in on_disk)
    with pytest.raises(InputError, match="out_dir"):
        build_lagllama_checkpoint(tmp_path / "seed1")


def test_inconsistent_config_is_a_load_error(tmp_path: Path, tiny: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"n_embd": 30, "n_head": 4}))
    (broken / "model.safetensors").write_bytes((tiny / "model.safetensors").read_bytes())
    with pytest.raises(ModelLoadError, match="n_embd"):
        LagLlamaForecaster("l", str(broken), device="cpu")


def test_student_t_sampler_matches_the_distribution() -> None:
    gen = torch.Generator().manual_seed(0)
    for df in (2.5, 6.0):
        uniforms = torch.rand(50_000, 12, 2, generator=gen, dtype=torch.float64)
        draws = student_t_polar(torch.full((50_000,), df, dtype=torch.float64), uniforms).numpy()
        assert stats.kstest(draws, "t", args=(df,)).pvalue > 0.01
        assert stats.kstest(draws, "t", args=(df + 2,)).pvalue < 0.01  # the test can tell tails apart


def test_context_reaches_back_the_longest_lag(model: LagLlamaForecaster) -> None:
    assert model.max_context == 64 + 672 and model.max_horizon == 1024


def test_nll_is_finite_and_falls_with_training() -> None:
    """A few Adam steps on a seeded noisy daily cycle must lower the held-out NLL clearly."""
    config = LagLlamaConfig(
        context_length=32, prediction_length=8, lags=(1, 2, 3, 24, 48), n_layer=1, n_head=2, n_embd=32, ffn_hidden=64
    )
    rng = np.random.default_rng(0)
    t = np.arange(4000)
    series = 100 + 10 * np.sin(2 * np.pi * t / 24) + rng.normal(0, 0.5, t.size)
    starts = rng.integers(0, t.size - config.window_length, size=96)
    windows = torch.tensor(np.stack([series[s : s + config.window_length] for s in starts]), dtype=torch.float32)
    train, held_out = windows[:64], windows[64:]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LagLlamaModel(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    with torch.no_grad():
        before = float(model(held_out))
    for step in range(25):
        batch = train[(step * 16) % 64 : (step * 16) % 64 + 16]
        loss = model(batch)
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = float(model(held_out))
    assert np.isfinite(before) and after < before - 1.0


def test_cached_decoding_matches_a_full_causal_pass() -> None:
    """Sampling's shared-prefix key/value cache must reproduce the training-time forward."""
    config = LagLlamaConfig(context_length=8, prediction_length=6, lags=(1, 2, 5), n_layer=2, n_head=2, n_embd=16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LagLlamaModel(config).eval()
        rows, paths = 2, 3
        prefix = torch.randn(rows, 9, config.feature_size)
        steps = torch.randn(rows * paths, 4, config.feature_size)
    with torch.no_grad():
        full, _ = model.distribution(torch.cat([prefix.repeat_interleave(paths, 0), steps], 1), torch.arange(13))
        _, cache = model.distribution(prefix, torch.arange(9))
        cache = [c._replace(k=c.k.repeat_interleave(paths, 0), v=c.v.repeat_interleave(paths, 0)) for c in cache]
        for h in range(4):
            step, cache = model.distribution(steps[:, h : h + 1], torch.tensor([9 + h]), cache)
            for got, want in zip(step, full, strict=True):
                torch.testing.assert_close(got[:, 0], want[:, 9 + h], rtol=1e-5, atol=1e-5)


def test_bfloat16_weights_still_forecast(tiny: Path) -> None:
    fc = LagLlamaForecaster("l", str(tiny), device="cpu", dtype="bfloat16", num_samples=10)
    out = fc.forecast([_series(100, 12)], 4, seeds=[0])
    assert np.isfinite(out.quantiles).all() and (np.diff(out.quantiles, axis=-1) >= 0).all()
