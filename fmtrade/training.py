"""Training steps for every neural model family, without Ray.

Each family trains with its own objective, which sits beside its adapter
(:meth:`fmtrade.models.neural.NeuralForecaster.objective`; computed by the family's own
library wherever the library has one), and is saved in its native format by the adapter
(:meth:`~fmtrade.models.neural.NeuralForecaster.save_checkpoint`).

:class:`TrainingRun` holds one model being trained (full weights, or peft LoRA on
the family's ``lora_target_modules``); its module is the forecaster's own, so the
forecaster forecasts with the weights being trained (validation WQL needs no copy).
:func:`pretrain_checkpoint` is the single-process pretraining loop that
``fmtrade models build --pretrain-minutes`` runs; the Ray Train jobs in ``train/``
wrap the same :class:`TrainingRun` in DistributedDataParallel.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from fmtrade.data.corpus import CorpusParams, corpus_sources, source_series, split_windows
from fmtrade.errors import InputError
from fmtrade.io import write_dir_atomic
from fmtrade.models.neural import NeuralForecaster
from fmtrade.models.objective import Geometry
from fmtrade.models.recipes import zoo_pretrain_lr
from fmtrade.models.registry import ADAPTERS, adapter_class

if TYPE_CHECKING:
    from peft import PeftMixedModel, PeftModel

log = logging.getLogger(__name__)

#: The trainable families: every registry adapter with weights.
FAMILIES: tuple[str, ...] = tuple(key for key, adapter in ADAPTERS.items() if adapter.needs_checkpoint)
#: Windows held out for the validation loss (the first ones, so every evaluation sees the same set).
MAX_VAL_WINDOWS = 256


@dataclass(frozen=True)
class LoraParams:
    """peft LoRA settings; ``target_modules`` None means the adapter's ``lora_target_modules``."""

    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise InputError("rank", f"must be a positive integer, got {self.rank}")
        if self.alpha <= 0:
            raise InputError("alpha", f"must be positive, got {self.alpha}")


def check_family(family: str, field: str = "arch") -> str:
    if family not in FAMILIES:
        raise InputError(field, f"{family!r} is not a trainable family ({', '.join(FAMILIES)})")
    return family


def load_for_training(family: str, checkpoint: str, device: str = "cpu") -> NeuralForecaster:
    """The family's forecaster on ``checkpoint`` in float32 (through the adapter's real loader)."""
    check_family(family)
    forecaster = adapter_class(family)(f"{family}-training", checkpoint, device=device, dtype="float32")
    if not isinstance(forecaster, NeuralForecaster):  # FAMILIES are the neural adapters
        raise TypeError(f"{family}: adapter built a {type(forecaster).__name__}, not a NeuralForecaster")
    return forecaster


# One model being trained -----------------------------------------------------------------------


class TrainingRun:
    """A forecaster's module under training: objective, optimiser, optional LoRA, state for resuming.

    ``model`` is what training calls (the Ray layer replaces it with a DDP wrapper); ``net``
    is the unwrapped trainable network (the peft model with LoRA, else the module).
    """

    def __init__(
        self,
        forecaster: NeuralForecaster,
        *,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        lora: LoraParams | None = None,
        context: int | None = None,
        grad_clip: float = 1.0,
        warmup_steps: int = 10,
    ) -> None:
        if lr <= 0:
            raise InputError("lr", f"must be positive, got {lr}")
        self.forecaster = forecaster
        self.family = forecaster.family
        self.objective = forecaster.objective(context)
        self.module: torch.nn.Module = forecaster.module
        self.lora = lora
        self.peft = self._wrap_lora(lora) if lora is not None else None
        self.net: torch.nn.Module = self.peft if self.peft is not None else self.module
        self.model: torch.nn.Module = self.net
        self.params = [p for p in self.net.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, weight_decay=weight_decay)
        # Linear warm-up: Adam's first steps move every weight by ~lr, which throws off fresh heads.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: min(1.0, (step + 1) / max(warmup_steps, 1))
        )
        self.grad_clip = grad_clip
        self.step = 0

    @property
    def geometry(self) -> Geometry:
        return self.objective.geometry

    def _wrap_lora(self, lora: LoraParams) -> PeftModel | PeftMixedModel:
        from peft import LoraConfig, get_peft_model

        targets = lora.target_modules or tuple(self.forecaster.lora_target_modules)
        config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(targets))
        try:
            return get_peft_model(self.module, config)  # injects LoRA layers into the module in place
        except ValueError as exc:
            raise InputError("target_modules", f"{', '.join(targets)}: {exc}") from exc

    @property
    def trainable_params(self) -> int:
        return sum(p.numel() for p in self.params)

    @property
    def total_params(self) -> int:
        """Parameters of the base model (LoRA weights excluded)."""
        return sum(p.numel() for n, p in self.net.named_parameters() if "lora_" not in n)

    def train_step(self, windows: torch.Tensor) -> float:
        self.model.train()
        loss = self.objective.loss(self.model, windows)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{self.family}: non-finite training loss at step {self.step}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return float(loss.detach())

    @torch.no_grad()
    def eval_loss(self, batches: Iterable[torch.Tensor]) -> float:
        """Mean loss over ``batches`` (weighted by rows), with dropout off."""
        self.net.eval()
        total, rows = 0.0, 0
        for windows in batches:
            total += float(self.objective.loss(self.net, windows)) * windows.shape[0]
            rows += windows.shape[0]
        if rows == 0:
            raise InputError("validation", "no validation windows (series too short for the context + horizon)")
        return total / rows

    # State -------------------------------------------------------------------------------------
    def weights(self) -> dict[str, torch.Tensor]:
        """The trained weights (LoRA: only the adapter's), detached on CPU."""
        names = {n for n, p in self.net.named_parameters() if p.requires_grad}
        state = self.net.state_dict()
        keep = names if self.lora is not None else state.keys()
        return {k: state[k].detach().cpu().clone() for k in keep}

    def load_weights(self, weights: Mapping[str, torch.Tensor]) -> None:
        missing = set(weights) - set(self.net.state_dict())
        if missing:
            raise ValueError(f"checkpoint weights do not fit this model: {sorted(missing)[:3]}")
        self.net.load_state_dict(dict(weights), strict=False)

    def state(self) -> dict[str, Any]:
        return {
            "weights": self.weights(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "step": self.step,
        }  # fmt: skip

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.load_weights(state["weights"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])

    def save(self, out_dir: Path, weights: Mapping[str, torch.Tensor] | None = None) -> Path:
        """Write the model (native checkpoint) or, with LoRA, the peft adapter directory; with
        ``weights`` (e.g. the best epoch's) those are saved and the current ones restored after."""
        current = self.weights() if weights is not None else None
        if weights is not None:
            self.load_weights(weights)
        try:
            peft = self.peft
            if peft is not None:
                return write_dir_atomic(out_dir, lambda tmp: peft.save_pretrained(str(tmp)))
            return self.forecaster.save_checkpoint(out_dir)
        finally:
            if current is not None:
                self.load_weights(current)


# Windows and the single-process pretraining loop -------------------------------------------------


def corpus_windows(
    items: Sequence[str],
    geometry: Geometry,
    params: CorpusParams = CorpusParams(),
    closes: Mapping[str, pd.Series] | None = None,
    stride: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """All ``(train, val)`` windows of a corpus (the in-process twin of ``fmtrade.train.datasets``)."""
    stride = stride or max(geometry.horizon // 2, 1)
    train, val = [], []
    for source in corpus_sources(items, params):
        series_closes = (closes or {}).get(source["symbol"]) if source["kind"] == "store" else None
        for series in source_series(source, params, closes=series_closes):
            t, v = split_windows(series, geometry.context, geometry.horizon, stride)
            train.append(t)
            val.append(v)
    return np.concatenate(train), np.concatenate(val)[:MAX_VAL_WINDOWS]


def batches(windows: np.ndarray, batch_size: int) -> Iterable[torch.Tensor]:
    for start in range(0, len(windows), batch_size):
        yield torch.from_numpy(windows[start : start + batch_size])


def loss_summary(losses: Sequence[float]) -> tuple[float, float]:
    """(first, last) training loss: means of the first and last ``k`` steps, ``k = clip(n // 4, 1, 10)``
    (one batch is a noisy estimate)."""
    k = int(np.clip(len(losses) // 4, 1, 10))
    return float(np.mean(losses[:k])), float(np.mean(losses[-k:]))


def pretrain_checkpoint(
    checkpoint: Path,
    family: str,
    out_dir: Path,
    *,
    minutes: float | None = None,
    steps: int | None = None,
    corpus: Sequence[str] = ("synthetic", "kernelsynth"),
    params: CorpusParams = CorpusParams(),
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    device: str = "cpu",
) -> dict[str, Any]:
    """Pretrain ``checkpoint`` in this process for ``minutes`` or ``steps`` and write it to ``out_dir``
    in the family's native format. Returns the loss summary (the ``fmtrade pretrain`` JSON keys)."""
    if (minutes is None) == (steps is None):
        raise InputError("minutes", "give exactly one of minutes or steps")
    if (minutes is not None and minutes <= 0) or (steps is not None and steps < 1):
        raise InputError("minutes" if minutes is not None else "steps", "must be positive")
    run = TrainingRun(load_for_training(family, str(checkpoint), device), lr=lr)
    train, val = corpus_windows(corpus, run.geometry, params)
    if len(train) == 0:
        raise InputError("corpus", "no training windows: the series are shorter than context + horizon")
    rng = np.random.default_rng(seed)
    val_first = run.eval_loss(batches(val, batch_size))
    deadline = time.monotonic() + 60.0 * minutes if minutes is not None else math.inf
    losses: list[float] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        while (steps is None or run.step < steps) and time.monotonic() < deadline:
            losses.append(run.train_step(torch.from_numpy(train[rng.integers(0, len(train), batch_size)])))
            if run.step % 50 == 0:
                log.info("%s pretraining: step %d, loss %.4f", family, run.step, np.mean(losses[-50:]))
    val_last = run.eval_loss(batches(val, batch_size))
    run.save(out_dir)
    first, last = loss_summary(losses) if losses else (math.nan, math.nan)
    return {
        "checkpoint": str(out_dir), "steps": run.step, "train_loss_first": first, "train_loss_last": last,
        "val_loss_first": val_first, "val_loss_last": val_last,
    }  # fmt: skip


def pretrain_in_place(checkpoint: Path, family: str, minutes: float, **kwargs: Any) -> dict[str, Any]:
    """Pretrain a freshly built zoo checkpoint directory and swap the result into its place (the
    ``post_build`` step of ``fmtrade models build --pretrain-minutes``)."""
    trained = checkpoint.with_name(f"{checkpoint.name}.pretrained")
    summary = pretrain_checkpoint(checkpoint, family, trained, minutes=minutes, **kwargs)
    shutil.rmtree(checkpoint)
    trained.rename(checkpoint)
    return {**summary, "checkpoint": str(checkpoint)}


def zoo_pretrainer(minutes: float, seed: int = 0) -> Callable[[Any, Path], None] | None:
    """A ``build_zoo`` post-build step that pretrains each new checkpoint in place for ``minutes``
    (None when ``minutes`` is 0: the zoo keeps its seeded initial weights)."""
    if minutes <= 0:
        return None

    def post_build(spec: Any, built: Path) -> None:
        if ADAPTERS[spec.adapter].published:
            return  # published weights (Fracast-0): minutes on the synthetic corpus would only undo them
        lr = zoo_pretrain_lr(spec.family)
        log.info("%s pretrained: %s", spec.name, pretrain_in_place(built, spec.family, minutes, seed=seed, lr=lr))

    return post_build
