"""Zoo recipe stamps: which version of a family's zoo recipe built a checkpoint.

A family's recipe number is bumped when its zoo architecture or pretraining recipe changes
(Chronos T5 -> 2: a 128-bar context and lr 3e-3, after the 512-bar model forecast off the price
scale). ``fmtrade models build`` replaces checkpoints of an older recipe, and loading one by its
zoo name is refused with that advice, so a zoo built before an upgrade is never served under the
new registry weights. Checkpoints without a stamp count as recipe 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fmtrade.io import write_json_atomic

ZOO_RECIPES: dict[str, int] = {"chronos": 2}
RECIPE_FILE = "fmtrade-zoo.json"

#: Zoo pretraining learning rates that differ from the default 1e-3 (part of a family's recipe):
#: Chronos T5's 4096-way token softmax moved too slowly at 1e-3 in minutes (2 minutes, 128-bar
#: context: val loss 2.27 vs 1.72 at 3e-3; BTC 2023 WQL 3.4x vs 2.7x the random walk, docs/RESULTS.md).
ZOO_PRETRAIN_LR: dict[str, float] = {"chronos": 3e-3}


def zoo_pretrain_lr(family: str) -> float:
    return ZOO_PRETRAIN_LR.get(family, 1e-3)


def current_recipe(family: str) -> int:
    return ZOO_RECIPES.get(family, 1)


def recipe_of(checkpoint: Path) -> int:
    """The zoo recipe that built ``checkpoint`` (1 when it carries no stamp, 0 when the stamp is unreadable)."""
    try:
        return int(json.loads((checkpoint / RECIPE_FILE).read_text())["recipe"])
    except FileNotFoundError:
        return 1
    except (ValueError, KeyError, TypeError):
        return 0


def is_outdated(family: str, checkpoint: Path) -> bool:
    return recipe_of(checkpoint) < current_recipe(family)


def stamp_recipe(checkpoint: Path, family: str, size: str, seed: int, **extra: Any) -> None:
    """Record the current recipe of ``family`` in a checkpoint built from its zoo builder (``extra``:
    how it was trained, e.g. ``steps_total``)."""
    stamp = {"recipe": current_recipe(family), "family": family, "size": size, "seed": seed, **extra}
    write_json_atomic(checkpoint / RECIPE_FILE, stamp)
