"""The Ray Train worker loop shared by pretraining and LoRA fine-tuning, and the driver that runs it.

Each worker builds the family's :class:`fmtrade.training.TrainingRun` (same seed on every
rank), wraps it in DistributedDataParallel (``ray.train.torch.prepare_model``) when there
is more than one worker, and trains on its shard of ``train`` until the budget is spent:
``steps``, ``minutes`` (all ranks agree through an all-reduce so DDP never hangs), or
``epochs`` (one pass over the shard each, with early stopping on validation WQL).

Every evaluation is reported with a checkpoint written by rank 0: ``state.pt`` (weights,
optimiser, step, loop state) to resume from, and ``model/`` -- the native checkpoint, or
the peft adapter at the best validation WQL so far -- to publish. After a worker dies,
``FailureConfig(max_failures)`` restarts the group and the loop resumes from
``ray.train.get_checkpoint()``. ``fail_at_step`` (with a marker file, so only the first
attempt dies) is the fault injection the tests use.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow
import pyarrow.fs
import ray
import ray.train
import torch
from ray.train import Checkpoint, CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from fmtrade.errors import FmtradeError, InputError
from fmtrade.evaluation import EVAL_QUANTILES
from fmtrade.io import write_dir_atomic
from fmtrade.metrics import weighted_quantile_loss
from fmtrade.training import LoraParams, TrainingRun, load_for_training, loss_summary

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
#: Seconds an injected fault waits before exiting: over two of Ray Train's 2 s status polls.
FAULT_GRACE_S = 5.0
MODEL_DIR = "model"


@dataclass(frozen=True)
class LoopConfig:
    """What one training job does (shipped to every worker)."""

    family: str
    checkpoint: str
    steps: int | None = None
    minutes: float | None = None
    epochs: int | None = None
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    context: int | None = None
    lora: LoraParams | None = None
    eval_every: int | None = None  # steps between evaluations/checkpoints (besides epoch ends)
    eval_horizon: int | None = None  # validation WQL at this horizon (fine-tuning)
    patience: int | None = None  # epochs without a better validation WQL before stopping
    seed: int = 0
    fail_at_step: int | None = None  # fault injection: the last rank exits at this step ...
    fail_marker: str | None = None  # ... unless this file exists (it creates it first)

    def __post_init__(self) -> None:
        budgets = [b for b in (self.steps, self.minutes, self.epochs) if b is not None]
        if len(budgets) == 0:
            raise InputError("steps", "give --steps, --minutes or --epochs")
        if any(b <= 0 for b in budgets):
            raise InputError("steps", "step, minute and epoch budgets must be positive")
        if self.batch_size < 1:
            raise InputError("batch_size", f"must be positive, got {self.batch_size}")
        if (self.fail_at_step is None) != (self.fail_marker is None):
            raise InputError("fail_at_step", "fault injection needs both fail_at_step and fail_marker")


@dataclass
class LoopState:
    """Loop bookkeeping that survives a restart (saved in every checkpoint)."""

    epoch: int = 0
    losses: list[float] = field(default_factory=list)
    samples: int = 0
    train_seconds: float = 0.0
    val_loss_first: float | None = None
    val_wql_first: float | None = None
    best_wql: float = math.inf
    bad_epochs: int = 0
    best_weights: dict[str, torch.Tensor] | None = None
    resumed_from: int | None = None


# Worker side -------------------------------------------------------------------------------------


def _any_rank(flag: bool) -> bool:
    """True when ``flag`` is true on any rank (all ranks must call this together)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    value = torch.tensor([1.0 if flag else 0.0])
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item() > 0)


def _validation_wql(run: TrainingRun, windows: np.ndarray, horizon: int) -> float:
    """WQL of the forecaster (weights under training) on validation windows at ``horizon``."""
    context = run.geometry.context
    targets = windows[:, context : context + horizon].astype(np.float64)
    keep = np.isfinite(targets).all(axis=1)
    if not keep.any():
        raise InputError("validation", "every validation target has missing bars")
    contexts = list(windows[keep, :context].astype(np.float64))
    run.net.eval()
    forecast = run.forecaster.forecast(contexts, horizon, EVAL_QUANTILES, seeds=list(range(len(contexts))))
    return weighted_quantile_loss(forecast.quantiles, forecast.quantile_levels, targets[keep])


def train_loop(config: dict[str, Any]) -> None:
    """``train_loop_per_worker`` of the TorchTrainer."""
    _Worker(config["loop"]).train()


class _Worker:
    """One rank's training run: its :class:`TrainingRun`, loop state, validation windows and reports."""

    def __init__(self, cfg: LoopConfig) -> None:
        self.cfg = cfg
        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        torch.manual_seed(cfg.seed)  # identical LoRA init on every rank
        self.run = TrainingRun(
            load_for_training(cfg.family, cfg.checkpoint, str(ray.train.torch.get_device())),
            lr=cfg.lr, weight_decay=cfg.weight_decay, lora=cfg.lora, context=cfg.context,
        )  # fmt: skip
        self.state, self.resumed = self._resume()
        if self.world > 1:
            self.run.model = ray.train.torch.prepare_model(
                self.run.net, move_to_device=False, parallel_strategy_kwargs={"find_unused_parameters": True}
            )
        self.train_shard = ray.train.get_dataset_shard("train")
        val_rows = ray.train.get_dataset_shard("val").iter_rows()
        self.val_windows = np.stack([row["window"] for row in val_rows])  # small; every rank holds all of it
        self.last_reported = -1

    def _resume(self) -> tuple[LoopState, bool]:
        """After a restart, restore the run from Ray Train's checkpoint and return its loop state
        (and True); on a fresh start, a new loop state (and False)."""
        restored = ray.train.get_checkpoint()
        if restored is None:
            return LoopState(), False
        with restored.as_directory() as directory:
            saved = torch.load(Path(directory) / STATE_FILE, weights_only=False)
        self.run.load_state(saved["run"])
        state: LoopState = saved["loop"]
        state.resumed_from = self.run.step
        log.info("rank %d resumed from step %d", self.rank, self.run.step)
        return state, True

    def train(self) -> None:
        """Evaluate the starting model (fresh start only), train until the budget is spent, report the end."""
        if not self.resumed:
            self._evaluate_start()
        deadline = time.monotonic() + 60.0 * self.cfg.minutes if self.cfg.minutes is not None else math.inf
        done = self._steps_spent() or (self.cfg.epochs is not None and self.state.epoch >= self.cfg.epochs)
        while not done:
            done = self._epoch(deadline) or self._end_epoch()
        if self.last_reported != self.run.step:
            metrics = self._evaluate()
            self._consider(metrics)
            self._report(metrics)

    def _steps_spent(self) -> bool:
        return self.cfg.steps is not None and self.run.step >= self.cfg.steps

    def _evaluate_start(self) -> None:
        first = self._evaluate()
        self.state.val_loss_first = first["val_loss"]
        if self.cfg.eval_horizon is not None:  # the zero-shot model is the first candidate for "best"
            self.state.val_wql_first = self.state.best_wql = first["val_wql"]
            self.state.best_weights = self.run.weights()

    def _epoch(self, deadline: float) -> bool:
        """One pass over this rank's shard; True when the step or time budget ran out (on any rank)."""
        cfg, state = self.cfg, self.state
        batches = 0
        for batch in self.train_shard.iter_torch_batches(
            batch_size=cfg.batch_size, dtypes=torch.float32, local_shuffle_buffer_size=4 * cfg.batch_size,
            local_shuffle_seed=cfg.seed + state.epoch,
        ):  # fmt: skip
            start = time.perf_counter()
            state.losses.append(self.run.train_step(batch["window"]))
            state.train_seconds += time.perf_counter() - start
            state.samples += int(batch["window"].shape[0])
            batches += 1
            self._maybe_inject_fault()
            if _any_rank(self._steps_spent() or time.monotonic() >= deadline):
                return True
            if cfg.eval_every and self.run.step % cfg.eval_every == 0:
                self._report(self._evaluate())
        if batches == 0:
            raise InputError("train", f"rank {self.rank} got no training batches (fewer windows than workers)")
        return False

    def _end_epoch(self) -> bool:
        """Count the epoch; with an epoch budget evaluate, keep the best weights and report. True when
        the epochs are spent or validation stopped improving for ``patience`` epochs."""
        state = self.state
        state.epoch += 1
        if self.cfg.epochs is None:
            return False
        metrics = self._evaluate()
        state.bad_epochs = 0 if self._consider(metrics) else state.bad_epochs + 1
        self._report(metrics)
        stop_early = self.cfg.patience is not None and state.bad_epochs >= self.cfg.patience
        return state.epoch >= self.cfg.epochs or stop_early

    def _maybe_inject_fault(self) -> None:
        """The fault injection the tests use: the last rank exits at ``fail_at_step``, once (marker file)."""
        cfg = self.cfg
        marker = Path(str(cfg.fail_marker))
        if cfg.fail_at_step != self.run.step or self.rank != self.world - 1 or marker.exists():
            return
        marker.touch()
        # Let the controller's status poll pick up the last report first (a real crash may
        # lose the newest checkpoint and resume from the one before).
        time.sleep(FAULT_GRACE_S)
        log.warning("fault injection: rank %d exits at step %d", self.rank, self.run.step)
        os._exit(1)

    def _evaluate(self) -> dict[str, Any]:
        step, windows = self.cfg.batch_size, self.val_windows
        batches = (torch.from_numpy(windows[i : i + step]) for i in range(0, len(windows), step))
        metrics: dict[str, Any] = {"val_loss": self.run.eval_loss(batches)}
        if self.cfg.eval_horizon is not None:
            metrics["val_wql"] = _validation_wql(self.run, windows, self.cfg.eval_horizon)
        return metrics

    def _consider(self, metrics: dict[str, Any]) -> bool:
        """Keep the weights with the best validation WQL (fine-tuning); True when these are better."""
        better = metrics.get("val_wql", math.inf) < self.state.best_wql
        if better:
            self.state.best_wql, self.state.best_weights = metrics["val_wql"], self.run.weights()
        return better

    def _report(self, metrics: dict[str, Any]) -> None:
        """Report ``metrics`` with the loop's running figures; rank 0 attaches the checkpoint."""
        run, state = self.run, self.state
        first, last = loss_summary(state.losses) if state.losses else (math.nan, math.nan)
        metrics = {
            **metrics, "step": run.step, "epoch": state.epoch, "train_loss_first": first, "train_loss_last": last,
            "val_loss_first": state.val_loss_first, "val_wql_first": state.val_wql_first,
            "samples_per_s": self.world * state.samples / state.train_seconds if state.train_seconds else None,
            "trainable_params": run.trainable_params, "total_params": run.total_params,
            "best_val_wql": state.best_wql if math.isfinite(state.best_wql) else None,
            "resumed_from": state.resumed_from,
        }  # fmt: skip
        self.last_reported = run.step
        if self.rank != 0:
            ray.train.report(metrics, checkpoint=None)
            return
        with tempfile.TemporaryDirectory(prefix="fmtrade-ckpt-") as directory:
            torch.save({"run": run.state(), "loop": state}, Path(directory) / STATE_FILE)
            run.save(Path(directory) / MODEL_DIR, weights=state.best_weights)
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(directory))


# Driver side -------------------------------------------------------------------------------------


def scaling(workers: int, use_gpu: bool) -> ScalingConfig:
    """``workers`` workers; on CPU each takes an equal share of the cluster's CPUs (at most one),
    leaving half a CPU for Ray Data, so two workers place on a 2-core machine."""
    if workers < 1:
        raise InputError("workers", f"must be positive, got {workers}")
    if use_gpu:
        return ScalingConfig(num_workers=workers, use_gpu=True)
    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    share = max(0.25, min(1.0, (cpus - 0.5) / workers))
    return ScalingConfig(num_workers=workers, resources_per_worker={"CPU": share})


def fit(
    name: str,
    cfg: LoopConfig,
    train: ray.data.Dataset,
    val: ray.data.Dataset,
    *,
    workers: int,
    use_gpu: bool,
    storage: str,
    max_failures: int = 1,
) -> ray.train.Result:
    """Run the loop on a TorchTrainer; raise FmtradeError (one line) when training fails."""
    filesystem, storage = storage_location(storage)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"loop": cfg},
        scaling_config=scaling(workers, use_gpu),
        datasets={"train": train, "val": val},
        dataset_config=DataConfig(datasets_to_split=["train"]),
        run_config=RunConfig(
            name=f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
            storage_path=storage,
            storage_filesystem=filesystem,
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as exc:
        raise FmtradeError(f"{name}: training failed: {root_cause(exc)}") from exc
    if result.error is not None:
        raise FmtradeError(f"{name}: training failed: {root_cause(result.error)}")
    if result.checkpoint is None:
        raise FmtradeError(f"{name}: training finished without a checkpoint")
    return result


def final_checkpoint(result: ray.train.Result) -> ray.train.Checkpoint:
    """The checkpoint a run :func:`fit` returned ends with (fit refuses a run without one)."""
    if result.checkpoint is None:
        raise FmtradeError("training finished without a checkpoint")
    return result.checkpoint


def storage_location(storage: str) -> tuple[pyarrow.fs.FileSystem | None, str]:
    """Ray Train's (filesystem, path) for a local path or a URI such as ``s3://bucket/prefix``.

    A URI is resolved here, on the driver, by pyarrow (``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``), and Ray ships
    the filesystem object to its workers, so an S3-compatible endpoint set where the job starts reaches every node.
    Credentials are not shipped: each node finds its own (``AWS_*`` variables, instance role).
    """
    if "://" not in storage:
        return None, str(Path(storage).expanduser().resolve())
    try:
        return pyarrow.fs.FileSystem.from_uri(storage)
    except (pyarrow.ArrowException, OSError) as exc:
        raise InputError("storage", f"cannot open {storage}: {exc}") from exc


def root_cause(exc: BaseException) -> str:
    """One line naming the innermost exception (Ray wraps a worker's error in its own)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def publish_model(checkpoint: ray.train.Checkpoint, out_dir: Path) -> Path:
    """Copy a checkpoint's ``model/`` to ``out_dir`` (atomically; ``out_dir`` must not exist)."""
    with checkpoint.as_directory() as directory:
        source = Path(directory) / MODEL_DIR
        return write_dir_atomic(out_dir, lambda tmp: shutil.copytree(source, tmp, dirs_exist_ok=True))


def summary(result: ray.train.Result) -> dict[str, Any]:
    """The final metrics, JSON-ready (NaN -> None)."""
    if result.metrics is None:
        raise FmtradeError("training finished without reporting metrics")
    out = {}
    for key, value in result.metrics.items():
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        out[key] = value
    return out
