"""Members that misbehave, for the service's end-to-end tests.

A test registry names them as custom adapters (``adapter: tests.faulty_models:FailingForecaster``),
so real Serve replicas build and call them like any model: the faults come from the models, not
from switches in the service's settings. Replicas import this module from the repository root,
which Ray puts on their path (the driver's working directory).

The faults hit forecasts longer than one step; one-step forecasts answer at once, so the replica
health probe (a one-step forecast) keeps the replicas up, as a model that fails on real requests
but still loads and runs would.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from fmtrade.models.baselines import RandomWalkForecaster


class FailingForecaster(RandomWalkForecaster):
    """Raises ``RuntimeError("injected failure")`` on every multi-step forecast."""

    def _predict(self, contexts: list[np.ndarray], horizon: int, *args: Any) -> tuple[np.ndarray, np.ndarray]:
        if horizon > 1:
            raise RuntimeError("injected failure")
        return super()._predict(contexts, horizon, *args)


class LateForecaster(RandomWalkForecaster):
    """Takes ``delay_s`` seconds (registry ``options: {delay_s: ...}``) for every multi-step forecast."""

    option_names = (*RandomWalkForecaster.option_names, "delay_s")

    def _configure(self, options: dict[str, Any]) -> None:
        super()._configure(options)
        self.delay_s = float(options.get("delay_s", 0.0))

    def _predict(self, contexts: list[np.ndarray], horizon: int, *args: Any) -> tuple[np.ndarray, np.ndarray]:
        if horizon > 1:
            time.sleep(self.delay_s)
        return super()._predict(contexts, horizon, *args)
