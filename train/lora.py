"""``fmtrade finetune``: peft LoRA fine-tuning of a registered foundation model per symbol (or pooled).

For each symbol (``per-symbol``) or once for all of them (``pooled``) a TorchTrainer run
(:mod:`fmtrade.train.loop`) trains LoRA adapters on the family's attention/feed-forward
projections (``--target-modules auto``: the adapter's ``lora_target_modules``) with the
family's own loss, on windows cut from the store by :mod:`fmtrade.train.datasets`:

* bars from ``val_start`` on are the **test** period: never trained on, never used to
  select anything; the zero-shot vs fine-tuned table is scored there;
* the last 10% of the bars before it are the **validation** part: validation WQL after
  every epoch drives early stopping (``patience``) and picks the published adapter (the
  zero-shot model is the first candidate, so a run that only hurts publishes an adapter
  equal to the base model);
* training windows end at least one training horizon before the validation part;
  ``max_train_bars`` keeps only the last N bars of training targets (few-shot).

With ``tune`` set, each adapter comes from a Ray Tune grid over learning rate and rank
(:mod:`fmtrade.train.tune`): the trial with the best validation WQL is published and every
trial is listed in the result's ``tune`` section.

Adapters land in ``<zoo>/adapters/<base>/<symbol>/`` (pooled: ``.../pooled/``), the
directory serve's multiplexing loads with the adapter's ``adapter=`` option.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from fmtrade.config import Settings
from fmtrade.data.closes import load_closes
from fmtrade.data.store import Store
from fmtrade.errors import InputError
from fmtrade.evaluation import EvalParams, evaluate_symbol
from fmtrade.forecasting import RANDOM_WALK
from fmtrade.io import check_writable, is_remote, upload_dir, write_failure
from fmtrade.jobs.ray_runtime import init_ray
from fmtrade.models.checkpoints import ADAPTER_CONFIG
from fmtrade.models.registry import active_specs, adapter_class, build_forecaster, resolve_checkpoint, select_specs
from fmtrade.models.zoo import adapters_root, publish_dir
from fmtrade.train.datasets import WindowSpec, window_datasets
from fmtrade.train.loop import LoopConfig, final_checkpoint, fit, publish_model, summary
from fmtrade.train.tune import TuneSpace, sweep
from fmtrade.training import FAMILIES, LoraParams, load_for_training

POOLED = "pooled"
TABLE_KEYS = ("mape", "wql", "coverage_80", "directional_accuracy", "mae", "windows")
#: Default test period: the last (1 - this) of the shortest series.
DEFAULT_TEST_START = 0.8


@dataclass(frozen=True)
class FinetuneParams:
    base: str
    symbols: tuple[str, ...]
    category: str = "linear"
    interval: str = "60"
    mode: Literal["per-symbol", "pooled"] = "per-symbol"
    lora: LoraParams = LoraParams()
    epochs: int = 3
    max_steps: int | None = None
    workers: int = 2
    use_gpu: bool = False
    val_start: pd.Timestamp | None = None
    max_train_bars: int | None = None
    adapters_root: str | None = None  # a path or URI (s3://...); default <zoo>/adapters
    storage: str | None = None  # default settings.train_storage()
    store: str | None = None
    horizon: int = 24
    batch_size: int = 32
    lr: float = 1e-3
    patience: int = 2
    seed: int = 0
    max_failures: int = 1
    fail_at_step: int | None = None
    fail_marker: str | None = None
    tune: TuneSpace | None = None  # a Ray Tune grid over lr and rank instead of one run

    def __post_init__(self) -> None:
        if not self.symbols:
            raise InputError("symbols", "at least one symbol is required")
        if self.mode not in ("per-symbol", POOLED):
            raise InputError("mode", f"{self.mode!r} is not one of per-symbol, pooled")
        if self.epochs < 1:
            raise InputError("epochs", f"must be positive, got {self.epochs}")
        if self.max_train_bars is not None and self.max_train_bars < 1:
            raise InputError("max_train_bars", f"must be positive, got {self.max_train_bars}")
        if self.horizon < 1:
            raise InputError("horizon", f"must be positive, got {self.horizon}")


def _test_start(closes: dict[str, pd.Series]) -> pd.Timestamp:
    """Default test start: the earliest of each symbol's :data:`DEFAULT_TEST_START` point."""
    return min(c.index[int(len(c) * DEFAULT_TEST_START)] for c in closes.values())


def finetune(settings: Settings, params: FinetuneParams) -> dict[str, Any]:
    """Run the job; returns the ``fmtrade finetune`` JSON document."""
    started = time.perf_counter()
    spec = select_specs(active_specs(settings), [params.base], field="base")[0]
    if spec.family not in FAMILIES:
        raise InputError("base", f"{params.base} is a {spec.family} model; fine-tuning needs one of {FAMILIES}")
    root = str(params.adapters_root or adapters_root(settings))
    check_writable(root, "out")  # before any work: a refusing destination must not cost a training run
    checkpoint = str(resolve_checkpoint(spec, settings))
    store = Store(settings.store_uri(params.store))
    closes = {s: load_closes(store, s, params.interval, params.category) for s in params.symbols}
    val_start = params.val_start or _test_start(closes)
    zero_shot = load_for_training(spec.family, checkpoint)
    if params.horizon > zero_shot.max_horizon:
        raise InputError("horizon", f"{params.horizon} exceeds {params.base}'s max_horizon {zero_shot.max_horizon}")
    geometry = zero_shot.objective().geometry
    if params.horizon > geometry.horizon:
        raise InputError("horizon", f"{params.horizon} exceeds the {spec.family} training horizon {geometry.horizon}")
    init_ray(settings.cluster.address, settings.cluster.num_cpus)
    # An object-store root: published and evaluated in a scratch directory, then uploaded.
    with tempfile.TemporaryDirectory(prefix="fmtrade-adapters-") as scratch_root:
        local_root = Path(scratch_root) if is_remote(root) else Path(root).expanduser()
        groups = {POOLED: list(params.symbols)} if params.mode == POOLED else {s: [s] for s in params.symbols}
        adapters: dict[str, str] = {}
        runs: list[dict[str, Any]] = []
        tuning: dict[str, dict[str, Any]] = {}
        for name, symbols in groups.items():
            spec_windows = WindowSpec(
                geometry, store_root=store.root, interval=params.interval, category=params.category,
                val_start=val_start, max_train_bars=params.max_train_bars,
            )  # fmt: skip
            sources = [{"kind": "store", "seed": 0, "symbol": s} for s in symbols]
            train, val = window_datasets(sources, spec_windows)
            cfg = LoopConfig(
                family=spec.family, checkpoint=checkpoint, epochs=params.epochs, steps=params.max_steps,
                batch_size=params.batch_size, lr=params.lr, lora=params.lora, eval_horizon=params.horizon,
                patience=params.patience, seed=params.seed, fail_at_step=params.fail_at_step,
                fail_marker=params.fail_marker,
            )  # fmt: skip
            run_args: dict[str, Any] = {
                "workers": params.workers, "use_gpu": params.use_gpu,
                "storage": params.storage or settings.train_storage(), "max_failures": params.max_failures,
            }  # fmt: skip
            if params.tune is None:
                result = fit(f"finetune-{params.base}-{name}", cfg, train, val, **run_args)
                trained, metrics = final_checkpoint(result), summary(result)
            else:
                swept = sweep(f"finetune-{params.base}-{name}", cfg, train, val, params.tune, **run_args)
                trained, metrics = swept.checkpoint, swept.metrics
                tuning[name] = {"best": swept.config, "trials": swept.trials}
            target = local_root / params.base / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix=f".{name}.", dir=target.parent) as scratch:
                publish_dir(publish_model(trained, Path(scratch) / name), target)
            adapters[name] = str(target)
            runs.append({"adapter": name, "train_windows": train.count(), **{k: metrics.get(k) for k in _RUN_KEYS}})
        table = _table(settings, spec, closes, adapters, params, val_start)
        if is_remote(root):
            adapters = _upload(adapters, root, params.base, settings.runs_dir())
    extra = {"tune": {"metric": "best_val_wql", "adapters": tuning}} if params.tune is not None else {}
    return {
        "base": params.base, "mode": params.mode, "val_start": val_start.isoformat(), "adapters": adapters,
        "trainable_params": runs[0]["trainable_params"], "total_params": runs[0]["total_params"],
        "runs": runs, "table": table, **extra, "seconds": round(time.perf_counter() - started, 1),
    }  # fmt: skip


def _upload(adapters: dict[str, str], root: str, base: str, runs_dir: Path) -> dict[str, str]:
    """Upload each trained adapter under ``root/base``; when the object store refuses, the adapters
    are copied to a new directory under ``runs_dir`` (the scratch copy is about to go) and the
    error says where, so a failed upload never loses a finished training run."""
    try:
        return {name: upload_dir(Path(path), f"{root.rstrip('/')}/{base}/{name}", last=ADAPTER_CONFIG)
                for name, path in adapters.items()}  # fmt: skip
    except OSError as exc:
        kept = runs_dir / f"finetune-{base}-adapters-{time.strftime('%Y%m%d-%H%M%S')}"
        for name, path in adapters.items():
            shutil.copytree(path, kept / name)
        raise InputError("out", f"{write_failure(root, exc)}; the trained adapters are kept in {kept}") from None


_RUN_KEYS = (
    "step", "epoch", "train_loss_first", "train_loss_last", "val_loss_first", "val_loss",
    "val_wql_first", "val_wql", "best_val_wql", "samples_per_s", "trainable_params", "total_params", "resumed_from",
)  # fmt: skip


def _table(
    settings: Settings,
    spec: Any,
    closes: dict[str, pd.Series],
    adapters: dict[str, str],
    params: FinetuneParams,
    val_start: pd.Timestamp,
) -> list[dict[str, Any]]:
    """Zero-shot vs fine-tuned vs random walk on the test period (targets from ``val_start`` on)."""
    zero_shot = build_forecaster(spec, settings)
    walk = adapter_class(RANDOM_WALK)(RANDOM_WALK)
    context = min(512, zero_shot.max_context)
    eval_params = EvalParams(context=context, horizon=params.horizon, stride=params.horizon, start=val_start)
    rows = []
    for symbol, series in closes.items():
        adapter = adapters.get(symbol) or adapters[POOLED]
        tuned = build_forecaster(spec.model_copy(update={"options": {**spec.options, "adapter": adapter}}), settings)
        models = {"zero-shot": zero_shot, "fine-tuned": tuned, RANDOM_WALK: walk}
        for row in evaluate_symbol(symbol, series, models, eval_params):
            if row["model"] in models:
                rows.append({"symbol": symbol, "setting": row["model"], **{k: row.get(k) for k in TABLE_KEYS}})
    return rows
