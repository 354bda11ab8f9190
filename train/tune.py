"""``fmtrade finetune --tune``: a small Ray Tune grid over learning rate and LoRA rank.

Each trial is a Tune function trainable that runs one TorchTrainer fine-tuning run
(:func:`fmtrade.train.loop.fit`; with Ray Train V2, Tune drives trainers from inside function
trainables) and reports the run's best validation WQL with its checkpoint. The trial
itself only waits on its trainer, whose workers hold the CPUs, so it reserves a token
:data:`TRIAL_CPU` (Tune refuses an empty request); ``max_concurrent`` trials need
``max_concurrent x workers`` CPUs. The winner is chosen
on validation WQL only; the test period stays untouched for the zero-shot vs fine-tuned
table. LoRA alpha scales with the rank, keeping the user's alpha / rank ratio.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any

import ray
from ray import tune
from ray.train import Checkpoint

from fmtrade.errors import FmtradeError, InputError
from fmtrade.train.loop import LoopConfig, final_checkpoint, fit, root_cause, storage_location, summary

METRIC = "best_val_wql"
#: CPU a trial reserves for itself: it only drives a trainer, whose workers reserve the real CPUs.
TRIAL_CPU = 0.01


@dataclass(frozen=True)
class TuneSpace:
    """The grid: every learning rate with every rank."""

    lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3)
    ranks: tuple[int, ...] = (4, 8)
    max_concurrent: int = 1

    def __post_init__(self) -> None:
        if not self.lrs or any(not (math.isfinite(lr) and lr > 0) for lr in self.lrs):
            raise InputError("tune_lrs", f"needs positive finite learning rates, got {list(self.lrs)}")
        if not self.ranks or any(r < 1 for r in self.ranks):
            raise InputError("tune_ranks", f"needs positive integer ranks, got {list(self.ranks)}")
        if self.max_concurrent < 1:
            raise InputError("tune_concurrent", f"must be positive, got {self.max_concurrent}")

    @property
    def size(self) -> int:
        return len(self.lrs) * len(self.ranks)


@dataclass(frozen=True)
class SweepResult:
    checkpoint: Checkpoint  # the best trial's final checkpoint
    metrics: dict[str, Any]  # the best trial's run summary
    config: dict[str, Any]  # its lr, rank, alpha
    trials: list[dict[str, Any]]  # every trial: lr, rank, alpha, best_val_wql, error


def trial_config(cfg: LoopConfig, lr: float, rank: int) -> LoopConfig:
    """``cfg`` with this trial's learning rate and rank (alpha keeps cfg's alpha / rank ratio)."""
    assert cfg.lora is not None  # fine-tuning always has LoRA settings
    alpha = max(1, round(rank * cfg.lora.alpha / cfg.lora.rank))
    return replace(cfg, lr=lr, lora=replace(cfg.lora, rank=rank, alpha=alpha))


def sweep(
    name: str,
    cfg: LoopConfig,
    train: ray.data.Dataset,
    val: ray.data.Dataset,
    space: TuneSpace,
    *,
    workers: int,
    use_gpu: bool,
    storage: str,
    max_failures: int = 1,
) -> SweepResult:
    """Run the grid; raise FmtradeError (one line) when no trial finished."""
    filesystem, path = storage_location(storage)

    def run_trial(config: dict[str, Any]) -> None:
        trial = trial_config(cfg, config["lr"], config["rank"])
        assert trial.lora is not None  # trial_config sets this trial's LoRA rank and alpha
        result = fit(
            f"{name}-lr{config['lr']:g}-r{config['rank']}", trial, train, val,
            workers=workers, use_gpu=use_gpu, storage=storage, max_failures=max_failures,
        )  # fmt: skip
        metrics = {k: v for k, v in summary(result).items() if isinstance(v, int | float)}
        tune.report({**metrics, "alpha": trial.lora.alpha, "checkpoint_path": final_checkpoint(result).path})

    tuner = tune.Tuner(
        tune.with_resources(run_trial, {"CPU": TRIAL_CPU}),
        param_space={"lr": tune.grid_search(list(space.lrs)), "rank": tune.grid_search(list(space.ranks))},
        tune_config=tune.TuneConfig(metric=METRIC, mode="min", max_concurrent_trials=space.max_concurrent),
        run_config=tune.RunConfig(
            name=f"{name}-tune-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=path, storage_filesystem=filesystem
        ),
    )
    grid = tuner.fit()
    results = [grid[i] for i in range(len(grid))]  # ResultGrid iterates by __getitem__; it has no typed __iter__
    trials = [_trial_row(result) for result in results]
    finished = [
        (r, scores) for r in results if r.error is None and (scores := r.metrics) and scores.get(METRIC) is not None
    ]
    if not finished:
        reasons = "; ".join(f"lr={t['lr']:g} rank={t['rank']}: {t['error']}" for t in trials)
        raise FmtradeError(f"{name}: every tuning trial failed ({reasons})")
    best, best_metrics = min(finished, key=lambda pair: pair[1][METRIC])
    checkpoint = Checkpoint(best_metrics["checkpoint_path"], filesystem=filesystem)
    best_config = _trial_config(best)
    config = {"lr": best_config["lr"], "rank": best_config["rank"], "alpha": best_metrics["alpha"]}
    metrics = {k: v for k, v in best_metrics.items() if k != "checkpoint_path"}
    return SweepResult(checkpoint, metrics, config, trials)


def _trial_config(result: tune.Result) -> dict[str, Any]:
    """The ``lr`` and ``rank`` a trial ran with (Tune records every trial's config)."""
    if result.config is None:
        raise FmtradeError("a tuning trial came back without its config")
    return result.config


def _trial_row(result: tune.Result) -> dict[str, Any]:
    metrics = result.metrics or {}
    error = None if result.error is None else root_cause(result.error)
    config = _trial_config(result)
    return {
        "lr": config["lr"],
        "rank": config["rank"],
        "alpha": metrics.get("alpha"),
        METRIC: metrics.get(METRIC),
        "val_wql_first": metrics.get("val_wql_first"),
        "step": metrics.get("step"),
        "error": error,
    }
