"""``fmtrade pretrain``: pretrain a zoo architecture on a corpus with Ray Train.

The job builds a fresh seeded checkpoint of the architecture and size
(``build_<family>_checkpoint``), expands the corpus into windows with Ray Data
(:mod:`fmtrade.train.datasets`), trains it with each family's own loss on ``workers`` DDP
workers (:mod:`fmtrade.train.loop`), and publishes the final checkpoint to ``out`` in the
family's native format -- the directory the adapter's ``from_pretrained`` loads, so it
can be dropped into the zoo as is.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from fmtrade.data.corpus import CorpusParams, corpus_sources, parse_corpus
from fmtrade.data.store import iso
from fmtrade.errors import InputError
from fmtrade.jobs.ray_runtime import init_ray
from fmtrade.models.checkpoints import stamp_of
from fmtrade.models.recipes import stamp_recipe
from fmtrade.models.registry import zoo_builder
from fmtrade.models.zoo import SIZES
from fmtrade.train.datasets import WindowSpec, window_datasets
from fmtrade.train.loop import LoopConfig, final_checkpoint, fit, publish_model, summary
from fmtrade.training import TrainingRun, check_family, load_for_training

#: Evaluations (and checkpoints) per run in ``--steps`` mode; ``--minutes`` mode checkpoints every this many steps.
EVALS_PER_RUN = 4
MINUTES_EVAL_EVERY = 200


@dataclass(frozen=True)
class PretrainParams:
    arch: str
    out: Path
    size: str = "tiny"
    steps: int | None = None
    minutes: float | None = None
    workers: int = 2
    use_gpu: bool = False
    corpus: tuple[str, ...] = ("synthetic", "kernelsynth")
    corpus_params: CorpusParams = CorpusParams()
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    store: str | None = None
    interval: str = "60"
    category: str = "linear"
    storage: str = "."
    until: pd.Timestamp | None = None  # stored bars strictly before it
    init: Path | None = None  # continue from this checkpoint instead of seeded weights
    max_failures: int = 1
    fail_at_step: int | None = None
    fail_marker: str | None = None

    def __post_init__(self) -> None:
        check_family(self.arch)
        if self.size not in SIZES:
            raise InputError("size", f"{self.size!r} is not one of {', '.join(SIZES)}")
        if (self.steps is None) == (self.minutes is None):
            raise InputError("steps", "give exactly one of --steps or --minutes")
        if Path(self.out).exists():
            raise InputError("out", f"{self.out} already exists; choose a new directory")
        if self.init is not None and not Path(self.init).is_dir():
            raise InputError("init", f"{self.init} is not a checkpoint directory")
        parse_corpus(self.corpus)


def _seeded(params: PretrainParams, out: Path) -> Path:
    """The zoo architecture at ``params.size`` with seeded initial weights."""
    builder = zoo_builder(params.arch)
    if builder is None:
        raise InputError("arch", f"{params.arch} has no zoo builder to initialise its weights")
    return Path(builder(out, size=params.size, seed=params.seed))


def pretrain(params: PretrainParams, address: str | None = "local") -> dict[str, Any]:
    """Run the job; returns ``{"checkpoint", "steps", "train_loss_first", "train_loss_last",
    "val_loss_first", "val_loss_last", ...}``."""
    started = time.perf_counter()
    init_ray(address)
    with tempfile.TemporaryDirectory(prefix="fmtrade-pretrain-") as scratch:
        initial = params.init or _seeded(params, Path(scratch) / "initial")
        geometry = TrainingRun(load_for_training(params.arch, str(initial))).geometry
        spec = WindowSpec(
            geometry, params.corpus_params, store_root=params.store, interval=params.interval,
            category=params.category, until=params.until,
        )  # fmt: skip
        train, val = window_datasets(corpus_sources(params.corpus, params.corpus_params), spec)
        cfg = LoopConfig(
            family=params.arch, checkpoint=str(initial), steps=params.steps, minutes=params.minutes,
            batch_size=params.batch_size, lr=params.lr, seed=params.seed,
            eval_every=max(params.steps // EVALS_PER_RUN, 1) if params.steps else MINUTES_EVAL_EVERY,
            fail_at_step=params.fail_at_step, fail_marker=params.fail_marker,
        )  # fmt: skip
        result = fit(
            f"pretrain-{params.arch}", cfg, train, val, workers=params.workers, use_gpu=params.use_gpu,
            storage=params.storage, max_failures=params.max_failures,
        )  # fmt: skip
        checkpoint = publish_model(final_checkpoint(result), Path(params.out))
        metrics = summary(result)
        steps_total = metrics["step"] + (stamp_of(params.init).get("steps_total", 0) if params.init else 0)
        # the zoo builder's architecture, and how many steps trained it across --init continuations
        stamp_recipe(checkpoint, params.arch, params.size, params.seed, steps_total=steps_total)
    return {
        "checkpoint": str(checkpoint), "arch": params.arch, "size": params.size, "steps": metrics["step"],
        "steps_total": steps_total,
        "corpus": ",".join(params.corpus), "until": None if params.until is None else iso(params.until),
        "init": None if params.init is None else str(params.init), "seed": params.seed,
        "train_loss_first": metrics["train_loss_first"], "train_loss_last": metrics["train_loss_last"],
        "val_loss_first": metrics["val_loss_first"], "val_loss_last": metrics["val_loss"],
        "workers": params.workers, "samples_per_s": metrics["samples_per_s"],
        "resumed_from": metrics["resumed_from"], "seconds": round(time.perf_counter() - started, 1),
    }  # fmt: skip
