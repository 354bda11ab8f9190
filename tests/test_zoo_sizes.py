"""Published sizes in the zoo: ``--size published-small|base`` builds each family at its published
checkpoints' dimensions (random weights), in the native format its loaders read (docs/MODELS.md, Sizes)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from fmtrade.models.chronos import (
    Chronos2Forecaster,
    ChronosBoltForecaster,
    build_chronos2_checkpoint,
    build_chronos_bolt_checkpoint,
    build_chronos_checkpoint,
)
from fmtrade.models.lagllama import LagLlamaForecaster, build_lagllama_checkpoint
from fmtrade.models.recipes import RECIPE_FILE
from fmtrade.models.timesfm import TimesFMForecaster, build_timesfm_checkpoint
from fmtrade.models.zoo import SIZES
from tests.conftest import run_cli


def stored_parameters(checkpoint: Path) -> int:
    total = 0
    for file in checkpoint.glob("*.safetensors"):
        with safe_open(str(file), "pt") as handle:
            total += sum(math.prod(handle.get_slice(key).get_shape()) for key in handle.keys())  # noqa: SIM118
    return total


def config(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "config.json").read_text())


def forecasts(model: object) -> None:
    rows = [np.linspace(100.0, 110.0, 96), np.linspace(5.0, 4.0, 80)]
    out = model.forecast(rows, 12, (0.1, 0.5, 0.9), seeds=[0, 1])  # type: ignore[attr-defined]
    assert out.quantiles.shape == (2, 12, 3) and np.isfinite(out.quantiles).all()


def test_sizes_name_fmtrades_own_then_the_published_ones() -> None:
    assert SIZES == ("tiny", "small", "published-small", "base")


def test_chronos2_published_sizes(tmp_path: Path) -> None:
    small = build_chronos2_checkpoint(tmp_path / "s", size="published-small", seed=0)
    base = build_chronos2_checkpoint(tmp_path / "b", size="base", seed=0)
    assert stored_parameters(small) == 28_262_560  # chronos-2-small: 28M
    assert stored_parameters(base) == 119_477_664  # chronos-2: 120M
    doc = config(base)
    assert (doc["d_model"], doc["d_ff"], doc["num_layers"], doc["num_heads"]) == (768, 3072, 12, 12)
    assert doc["chronos_config"]["context_length"] == 8192 and doc["chronos_config"]["max_output_patches"] == 64
    model = Chronos2Forecaster("c2", str(small), device="cpu")
    assert model.max_context == 8192
    forecasts(model)


def test_lagllama_published_size(tmp_path: Path) -> None:
    built = build_lagllama_checkpoint(tmp_path / "l", size="base", seed=0)
    assert stored_parameters(built) == 2_445_267  # lag-llama: 2.45M
    doc = config(built)
    assert (doc["n_layer"], doc["n_head"], doc["n_embd"], doc["context_length"]) == (8, 9, 144, 32)
    forecasts(LagLlamaForecaster("ll", str(built), device="cpu", num_samples=8))


@pytest.mark.slow
def test_t5_families_at_published_sizes(tmp_path: Path) -> None:
    """Chronos T5 and Chronos-Bolt small/base: the published parameter counts, geometry and loaders."""
    expected = {
        (build_chronos_checkpoint, "published-small"): 46_154_240,  # chronos-t5-small: 46M
        (build_chronos_checkpoint, "base"): 201_374_976,  # chronos-t5-base: 200M
        (build_chronos_bolt_checkpoint, "published-small"): 47_718_016,  # chronos-bolt-small: 48M
        (build_chronos_bolt_checkpoint, "base"): 205_292_928,  # chronos-bolt-base: 205M
    }
    for (builder, size), params in expected.items():
        built = builder(tmp_path / f"{builder.__name__}-{size}", size=size, seed=0)
        assert stored_parameters(built) == params, (builder.__name__, size)
    bolt = tmp_path / "build_chronos_bolt_checkpoint-published-small"
    doc = config(bolt)
    assert doc["chronos_config"]["context_length"] == 2048 and doc["vocab_size"] == 2
    model = ChronosBoltForecaster("bolt", str(bolt), device="cpu")
    assert model.max_context == 2048
    forecasts(model)
    assert config(tmp_path / "build_chronos_checkpoint-base")["chronos_config"]["context_length"] == 512


@pytest.mark.slow
def test_timesfm_published_size_is_the_stock_200m_model(tmp_path: Path) -> None:
    """The package's own class (which builds only its 200M module) loads the zoo checkpoint."""
    from timesfm import TimesFM_2p5_200M_torch

    built = build_timesfm_checkpoint(tmp_path / "t", size="base", seed=0)
    assert stored_parameters(built) == 231_289_280
    stock = TimesFM_2p5_200M_torch.from_pretrained(str(built), torch_compile=False)
    ours = TimesFMForecaster("tfm", str(built), device="cpu")
    for name, tensor in ours.module.state_dict().items():
        assert (stock.model.state_dict()[name] == tensor).all(), name
    forecasts(ours)


def test_recipe_stamp_and_cli_size(capsys: pytest.CaptureFixture[str]) -> None:
    """``fmtrade models build --size base`` builds from seeded weights (not the shipped tiny ones)."""
    code, out, err = run_cli(["models", "build", "--only", "lagllama-fm-tiny", "--size", "base", "--json"], capsys)
    assert code == 0, err
    (row,) = json.loads(out)
    assert row["status"] == "built"
    checkpoint = Path(row["checkpoint"])
    assert json.loads((checkpoint / RECIPE_FILE).read_text())["size"] == "base"
    assert stored_parameters(checkpoint) == 2_445_267
    code, out, err = run_cli(["models", "build", "--only", "lagllama-fm-tiny", "--size", "huge", "--force"], capsys)
    assert code == 2 and "size: 'huge' is not one of tiny, small, published-small, base" in err
