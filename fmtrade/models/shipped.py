"""Zoo checkpoints shipped inside the package: pretrained by fmtrade on real bars, copied into the
zoo by ``fmtrade models build`` in seconds instead of being pretrained on every machine.

Each lives in ``fmtrade/models/shipped/<zoo name>/`` in its family's native format, with the zoo
recipe stamp (``fmtrade-zoo.json``) extended by how it was trained (corpus, cutoff, steps,
validation loss, code version) and the sha256 of every weight file. The hashes are checked when
the checkpoint is copied and whenever a zoo checkpoint carrying them is loaded, so a damaged or
swapped weight file is refused by name instead of forecasting garbage.

A maintainer ships a newly trained checkpoint with::

    python -m fmtrade.models.shipped CHECKPOINT_DIR --name chronos-bolt-fm-tiny --pretrain-json run.json

which refuses weights whose validation loss is not below the shipped ones' on the same corpus
and cutoff (every committed binary stays in the repository's history).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from fmtrade.errors import InputError
from fmtrade.io import write_json_atomic
from fmtrade.models.checkpoints import stamp_of, verify_hashes, weight_hashes
from fmtrade.models.recipes import RECIPE_FILE, current_recipe

SHIPPED_DIR = Path(__file__).with_name("shipped")
#: What a pretraining run must report for its checkpoint to ship (``fmtrade pretrain --json`` keys).
TRAINING_KEYS = ("arch", "size", "corpus", "until", "steps_total", "val_loss_first", "val_loss_last", "seconds")


def shipped_checkpoint(name: str) -> Path | None:
    """The shipped checkpoint of zoo model ``name``, if the package has one."""
    path = SHIPPED_DIR / name
    return path if (path / RECIPE_FILE).is_file() else None


def copy_shipped(name: str, dest: Path) -> Path:
    """Copy the shipped checkpoint ``name`` to ``dest`` (which must not exist) and check its hashes."""
    source = shipped_checkpoint(name)
    if source is None:
        raise InputError("name", f"no shipped checkpoint named {name}")
    shutil.copytree(source, dest)
    verify_hashes(dest)
    return dest


def _code_version() -> str:
    """The git commit this checkout is at (``unknown`` outside a checkout)."""
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=10, check=True)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() or "unknown"


def ship(checkpoint: Path, name: str, training: dict[str, Any], force: bool = False) -> Path:
    """Put a trained checkpoint into the package as ``name``, stamped with ``training`` (the
    pretraining run's summary) and its weight hashes; refused unless its validation loss beats the
    shipped one's on the same corpus and cutoff (``force`` skips that comparison)."""
    missing = [k for k in TRAINING_KEYS if k not in training]
    if missing:
        raise InputError("pretrain_json", f"missing {', '.join(missing)}")
    current = shipped_checkpoint(name)
    if current is not None and not force:
        old = stamp_of(current)
        comparable = (old.get("corpus"), old.get("until")) == (training["corpus"], training["until"])
        if comparable and not training["val_loss_last"] < old["val_loss_last"]:
            raise InputError(
                "checkpoint",
                f"validation loss {training['val_loss_last']:.5g} does not beat the shipped "
                f"{old['val_loss_last']:.5g}: not shipped",
            )
    stamp = {
        **{k: training[k] for k in TRAINING_KEYS},
        "recipe": current_recipe(training["arch"]),
        "family": training["arch"],
        "seed": training.get("seed", 0),
        "code_version": _code_version(),
        "sha256": weight_hashes(checkpoint),
    }
    SHIPPED_DIR.mkdir(exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.ship-", dir=SHIPPED_DIR))
    try:
        copy = staging / name
        shutil.copytree(checkpoint, copy, ignore=shutil.ignore_patterns(RECIPE_FILE))
        write_json_atomic(copy / RECIPE_FILE, stamp)
        if current is not None:
            shutil.rmtree(current)
        copy.rename(SHIPPED_DIR / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return SHIPPED_DIR / name


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m fmtrade.models.shipped", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="checkpoint directory written by `fmtrade pretrain --out`")
    parser.add_argument("--name", required=True, help="zoo model name it ships as, e.g. chronos-bolt-fm-tiny")
    parser.add_argument("--pretrain-json", type=Path, required=True, help="`fmtrade pretrain --json` output")
    parser.add_argument("--force", action="store_true", help="ship even if it does not beat the shipped one")
    args = parser.parse_args()
    try:
        path = ship(args.checkpoint, args.name, json.loads(args.pretrain_json.read_text()), force=args.force)
    except InputError as exc:
        parser.exit(2, f"error: {exc}\n")
    print(path)


if __name__ == "__main__":
    main()
