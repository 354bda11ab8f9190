"""What every neural adapter inherits from NeuralForecaster, checked per family on tiny zoo
checkpoints: option checks before any loading, the zoo hint, the context cap, and a peft LoRA
adapter merged into the weights on the forecaster's own device."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model

from fmtrade.errors import InputError
from fmtrade.models.checkpoints import ModelLoadError
from fmtrade.models.neural import NeuralForecaster
from fmtrade.models.registry import ADAPTERS, adapter_class, zoo_builder

NEURAL = [key for key, adapter in ADAPTERS.items() if adapter.needs_checkpoint]
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]
OPTIONS = {"chronos": {"num_samples": 8}, "lagllama": {"num_samples": 32}}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("zoo")
    return {key: zoo_builder(key)(root / key, size="tiny", seed=0) for key in NEURAL}


def _load(family: str, checkpoint: Path, **kwargs: object) -> NeuralForecaster:
    return adapter_class(family)(family, str(checkpoint), dtype="float32", **OPTIONS.get(family, {}), **kwargs)


def _rows() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, n))) for n in (90, 200)]


def test_every_neural_adapter_derives_from_the_base() -> None:
    assert NEURAL == ["chronos", "chronos-bolt", "chronos2", "timesfm", "lagllama", "fracast"]
    assert all(issubclass(adapter_class(key), NeuralForecaster) for key in NEURAL)


@pytest.mark.parametrize("family", NEURAL)
def test_options_are_checked_before_loading(family: str, tmp_path: Path) -> None:
    missing = tmp_path / "not-built"
    with pytest.raises(InputError, match=f"unknown option\\(s\\) for {family}: bogus") as err:
        _load(family, missing, bogus=1)
    assert err.value.field == "options"
    with pytest.raises(InputError, match="must be positive") as err:
        _load(family, missing, context_length=0)
    assert err.value.field == "context_length"
    with pytest.raises(ModelLoadError, match="does not exist; build the local zoo with `fmtrade models build`"):
        _load(family, missing)


@pytest.mark.parametrize("family", NEURAL)
def test_context_length_caps_the_context(family: str, checkpoints: dict[str, Path]) -> None:
    assert _load(family, checkpoints[family], device="cpu", context_length=64).max_context == 64
    assert _load(family, checkpoints[family], device="cpu", context_length=10**9).max_context < 10**9


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("family", NEURAL)
def test_lora_adapter_is_merged_on_the_models_device(
    family: str, device: str, checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    live = _load(family, checkpoints[family], device=device)
    targets = list(live.lora_target_modules)
    linear = {n.split(".")[-1] for n, m in live.module.named_modules() if isinstance(m, torch.nn.Linear)}
    assert set(targets) <= linear
    rows = _rows()
    base = live.forecast(rows, 8, seeds=[1, 2])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
        get_peft_model(live.module, config).save_pretrained(tmp_path / "adapter")
    tuned = live.forecast(rows, 8, seeds=[1, 2])  # live LoRA layers, injected into the forecaster's module
    assert np.abs(tuned.quantiles - base.quantiles).max() > 1e-3

    merged = _load(family, checkpoints[family], device=device, adapter=str(tmp_path / "adapter"))
    tensors = [*merged.module.parameters(), *merged.module.buffers()]
    assert {t.device.type for t in tensors} == {torch.device(merged.device).type}
    assert not [n for n, _ in merged.module.named_parameters() if "lora_" in n]  # merged, not wrapped
    np.testing.assert_allclose(merged.forecast(rows, 8, seeds=[1, 2]).quantiles, tuned.quantiles, rtol=1e-4)
    with pytest.raises(InputError, match="not a peft adapter directory"):
        _load(family, checkpoints[family], device=device, adapter=str(tmp_path))
