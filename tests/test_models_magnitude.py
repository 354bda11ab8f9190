"""Price magnitudes outside what a neural model's float32 arithmetic handles (tokens priced at
1e-8, series at 1e20) are forecast as the same series at the edge of the model's working range,
scaled back. Without it TimesFM returned a flat line and Lag-Llama negative prices for tiny
prices, and Chronos-Bolt / Chronos-2 overflowed on huge ones."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fmtrade.models.base import NEURAL_WORKING_RANGE, Forecaster
from fmtrade.models.chronos import (
    Chronos2Forecaster,
    ChronosBoltForecaster,
    ChronosForecaster,
    build_chronos2_checkpoint,
    build_chronos_bolt_checkpoint,
    build_chronos_checkpoint,
)
from fmtrade.models.lagllama import LagLlamaForecaster, build_lagllama_checkpoint
from fmtrade.models.timesfm import TimesFMForecaster, build_timesfm_checkpoint

FAMILIES: dict[str, tuple[Callable[..., Path], type[Forecaster], bool]] = {
    # name: (builder, adapter, normalises its input itself, so its forecasts scale with the input)
    "chronos": (build_chronos_checkpoint, ChronosForecaster, True),
    "chronos-bolt": (build_chronos_bolt_checkpoint, ChronosBoltForecaster, True),
    "chronos2": (build_chronos2_checkpoint, Chronos2Forecaster, True),
    "timesfm": (build_timesfm_checkpoint, TimesFMForecaster, True),
    "lagllama": (build_lagllama_checkpoint, LagLlamaForecaster, False),  # log-scale features
}
LEVELS = (0.1, 0.5, 0.9)
SEEDS = [1, 2, 3]
TINY, HUGE = 2.0**-1000, 2.0**1000  # ~1e-301 and ~1e301: far outside float32


def _walks() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    walks = [90.0 * np.exp(np.cumsum(rng.normal(0, 0.01, 200))) for _ in range(3)]
    # The twins below assume mean |value| in [2**6, 2**7): the range's edges are 2**-10 and 2**50.
    assert all(64.0 <= w.mean() < 128.0 for w in walks)
    assert NEURAL_WORKING_RANGE == (2.0**-10, 2.0**50)
    return walks


def _quantiles(model: Forecaster, contexts: list[np.ndarray], scale: float) -> np.ndarray:
    """Quantiles of ``contexts * scale``, in the units of ``contexts``."""
    fc = model.forecast([c * scale for c in contexts], 4, LEVELS, seeds=SEEDS)
    np.testing.assert_array_equal(fc.last_values, [c[-1] * scale for c in contexts])
    return fc.quantiles / scale


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_far_magnitudes_are_forecast_as_their_in_range_twin(family: str, tmp_path: Path) -> None:
    builder, adapter, scales_with_input = FAMILIES[family]
    model = adapter(family, str(builder(tmp_path / family)), device="cpu")
    assert model.working_range == NEURAL_WORKING_RANGE
    walks = _walks()
    tiny, huge = _quantiles(model, walks, TINY), _quantiles(model, walks, HUGE)
    # The twins: the same walks at the low edge (mean in [2**-10, 2**-9)) and the high one.
    np.testing.assert_allclose(tiny, _quantiles(model, walks, 2.0**-16), rtol=1e-5)
    np.testing.assert_allclose(huge, _quantiles(model, walks, 2.0**43), rtol=1e-5)
    if scales_with_input:
        plain = _quantiles(model, walks, 1.0)
        np.testing.assert_allclose(tiny, plain, rtol=1e-4)
        np.testing.assert_allclose(huge, plain, rtol=1e-4)
