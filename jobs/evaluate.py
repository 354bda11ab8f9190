"""Ray job behind ``fmtrade evaluate --address``: zero-shot evaluation of every asset in parallel.

One Ray task per symbol loads the models and calls
:func:`fmtrade.evaluation.evaluate_symbol` (a pure function of the series, the models and
the parameters), so the rows are the same as the in-process loop, only computed side by side.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import ray

from fmtrade.config import Settings
from fmtrade.evaluation import EvalParams, evaluate_symbol
from fmtrade.jobs.ray_runtime import get, init_ray
from fmtrade.models.registry import ModelSpec, build_forecaster
from fmtrade.walkforward import WalkForward


@ray.remote
def evaluate_task(
    symbol: str, series: pd.Series, specs: list[ModelSpec], settings: Settings, params: EvalParams,
    walk: WalkForward | None,
) -> list[dict[str, Any]]:  # fmt: skip
    forecasters = {spec.name: build_forecaster(spec, settings) for spec in specs}
    return evaluate_symbol(symbol, series, forecasters, params, walk)


def run_evaluate_job(
    series: Mapping[str, pd.Series],
    specs: Sequence[ModelSpec],
    settings: Settings,
    params: EvalParams,
    walk: WalkForward | None = None,
    address: str | None = None,
) -> list[dict[str, Any]]:
    """Rows of :func:`evaluate_symbol` for every symbol of ``series`` (in that order), one Ray task
    per symbol (GPU tasks when ``backtest.use_gpu``). Connects with :func:`init_ray`."""
    init_ray(address or settings.cluster.address, settings.cluster.num_cpus)
    resources = {"num_gpus": 1} if settings.backtest.use_gpu else {"num_cpus": 1}
    task = evaluate_task.options(**resources)
    refs = [task.remote(symbol, closes, list(specs), settings, params, walk) for symbol, closes in series.items()]
    return [row for rows in get(refs) for row in rows]
