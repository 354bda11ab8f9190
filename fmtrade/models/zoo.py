"""The local model zoo: fmtrade-built checkpoints for machines without a model hub.

Every zoo model of the active registry profile (a spec whose checkpoint lives in
``settings.zoo_dir()`` and whose family has a builder) is written by its family's
``build_<family>_checkpoint`` in the family's native on-disk format, so the same
``from_pretrained`` code that loads a hub checkpoint loads it. A model the package
ships pretrained weights for (:mod:`fmtrade.models.shipped`) is copied in, its hashes
checked; otherwise builds start from seeded random weights and ``post_build`` lets a
later step (pretraining) run on each freshly built checkpoint before it is published.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fmtrade.config import Settings
from fmtrade.errors import ConfigError, InputError
from fmtrade.models.checkpoints import progress_bars_only_on_a_terminal
from fmtrade.models.recipes import is_outdated, stamp_recipe
from fmtrade.models.registry import (
    ModelSpec,
    active_specs,
    in_zoo,
    is_available,
    is_hub_id,
    resolve_checkpoint,
    select_specs,
    zoo_builder,
)
from fmtrade.models.shipped import copy_shipped, shipped_checkpoint

log = logging.getLogger(__name__)

#: ``tiny`` and ``small`` are fmtrade's CPU sizes (what the shipped weights were trained at);
#: ``published-small`` and ``base`` build each family at its published checkpoints' sizes, random-
#: initialised, for GPUs (docs/MODELS.md, Sizes). A family with one published size builds it for both.
SIZES = ("tiny", "small", "published-small", "base")

#: Called as ``post_build(spec, checkpoint_dir)`` on a freshly built checkpoint before it is published.
PostBuild = Callable[[ModelSpec, Path], None]


def zoo_specs(settings: Settings) -> list[ModelSpec]:
    """Specs of the active profile that fmtrade builds itself (checkpoint inside the zoo dir)."""
    return [spec for spec in active_specs(settings) if spec.family != "baseline" and in_zoo(spec, settings)]


def publish_dir(build_dir: Path, target: Path) -> None:
    """Swap ``build_dir`` into ``target``; an old checkpoint is removed only after the swap."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{time.time_ns()}")
        target.rename(old)
    build_dir.rename(target)
    if old is not None:
        shutil.rmtree(old)


def retire_adapters(settings: Settings, model: str) -> Path | None:
    """Move ``model``'s LoRA adapters aside once its base checkpoint has been replaced: they were
    trained on the old weights, and Serve would otherwise apply them to the new ones. Returns where
    they went (``<zoo>/adapters/.<model>.retired-<ns>``), None when there were none."""
    current = adapters_root(settings) / model
    if not current.is_dir():
        return None
    retired = current.with_name(f".{model}.retired-{time.time_ns()}")
    current.rename(retired)
    log.warning("%s was rebuilt: its LoRA adapters were trained on the old weights, moved to %s", model, retired)
    return retired


def build_zoo(
    settings: Settings,
    only: Sequence[str] | None = None,
    size: str = "tiny",
    seed: int = 0,
    force: bool = False,
    post_build: PostBuild | None = None,
    use_shipped: bool = False,
) -> list[dict[str, Any]]:
    """Build the zoo checkpoints (``only`` restricts by name); existing ones are kept unless ``force``
    or an older family recipe built them (status ``rebuilt``). With ``use_shipped`` a model the
    package ships weights for is copied in (status ``shipped``) instead of built at ``size``.

    Each checkpoint is built (and post-processed) in a scratch directory beside the zoo
    and renamed into place, so a crash never leaves a half-written model behind.
    A replaced checkpoint's LoRA adapters are retired (:func:`retire_adapters`).
    Returns one ``{"name", "family", "checkpoint", "status", "seconds"}`` per model (plus
    ``adapters_retired`` where adapters were moved aside).
    """
    if size not in SIZES:
        raise InputError("size", f"{size!r} is not one of {', '.join(SIZES)}")
    specs = zoo_specs(settings)
    if only:
        zoo_names = {s.name for s in specs}
        not_zoo = [n for n in only if n not in zoo_names]
        if not_zoo:
            known = ", ".join(sorted(zoo_names)) or "none in this profile"
            raise InputError("only", f"{', '.join(not_zoo)} is not a zoo model (zoo models: {known})")
        specs = select_specs(specs, only, field="only")
    zoo = settings.zoo_dir()
    zoo.mkdir(parents=True, exist_ok=True)
    progress_bars_only_on_a_terminal()  # every build saves with transformers' shard-writing bar
    report = []
    for spec in specs:
        target = Path(resolve_checkpoint(spec, settings) or "")
        row = {"name": spec.name, "family": spec.family, "checkpoint": str(target)}
        replacing = target.exists()
        outdated = replacing and is_outdated(spec.family, target)
        if replacing and not force and not outdated:
            report.append({**row, "status": "exists", "seconds": 0.0})
            continue
        start = time.perf_counter()
        scratch = Path(tempfile.mkdtemp(prefix=f".{spec.name}.build-", dir=zoo))
        try:
            if use_shipped and shipped_checkpoint(spec.name) is not None:
                built, status = copy_shipped(spec.name, scratch / spec.name), "shipped"
            else:
                built, status = _build(spec, scratch / spec.name, size, seed, post_build), "built"
            publish_dir(built, target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        retired = retire_adapters(settings, spec.name) if replacing else None
        if retired is not None:
            row["adapters_retired"] = str(retired)
        status = "rebuilt" if outdated and status == "built" else status
        report.append({**row, "status": status, "seconds": round(time.perf_counter() - start, 2)})
    return report


def _build(spec: ModelSpec, out: Path, size: str, seed: int, post_build: PostBuild | None) -> Path:
    """Seeded initial weights in the family's native format, then ``post_build``, then the recipe stamp."""
    builder = zoo_builder(spec.adapter)
    if builder is None:  # a custom adapter whose checkpoint names a directory in the zoo
        raise ConfigError(f"{spec.name}: adapter {spec.adapter} has no zoo builder; fmtrade cannot build {out.name}")
    built = Path(builder(out, size=size, seed=seed))
    if post_build is not None:
        post_build(spec, built)
    stamp_recipe(built, spec.family, size, seed)
    return built


def list_models(settings: Settings) -> list[dict[str, Any]]:
    """Every model of the active profile as ``{"name", "family", "checkpoint", "device", "available",
    "enabled"}``; ``available``: baselines always, local checkpoints when built, hub ids when cached."""
    rows = []
    for spec in active_specs(settings):
        rows.append(
            {
                "name": spec.name,
                "family": spec.family,
                "checkpoint": resolve_checkpoint(spec, settings),
                "device": spec.device,
                "available": is_available(spec, settings),
                "enabled": spec.enabled,
                "source": "baseline" if spec.checkpoint is None else "hub" if is_hub_id(spec, settings) else "local",
            }
        )
    return rows


def adapters_root(settings: Settings) -> Path:
    """Root of the per-symbol LoRA adapters: ``<zoo>/adapters``."""
    return settings.zoo_dir() / "adapters"


def adapter_dir(settings: Settings, model: str, adapter: str) -> Path:
    """Where the training job publishes, and Serve multiplexing loads, an adapter:
    ``<zoo>/adapters/<model>/<adapter>/`` (``adapter`` is a symbol or ``pooled``)."""
    return adapters_root(settings) / model / adapter
