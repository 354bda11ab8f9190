"""Which models a backtest runs: registry names plus the pseudo-model ``ensemble``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fmtrade.config import Settings
from fmtrade.ensemble import ENSEMBLE_NAME
from fmtrade.forecasting import RANDOM_WALK
from fmtrade.models.registry import ModelSpec, active_specs, select_specs


@dataclass(frozen=True)
class ModelSelection:
    specs: list[ModelSpec]  # models to forecast with (ensemble members are all of them)
    ensemble: bool

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs] + ([ENSEMBLE_NAME] if self.ensemble else [])


def select_models(settings: Settings, names: Sequence[str] | None) -> ModelSelection:
    """``names`` from ``--models`` (``ensemble`` alone means the ensemble of every enabled model);
    none given: every enabled model of the active profile, the random walk and the ensemble."""
    specs = active_specs(settings)
    wanted = [n for n in (names or []) if n != ENSEMBLE_NAME]
    ensemble = not names or ENSEMBLE_NAME in names
    chosen = select_specs(specs, wanted or None)
    if not names and RANDOM_WALK not in {s.name for s in chosen}:
        default = ModelSpec(name=RANDOM_WALK, adapter=RANDOM_WALK)
        chosen.append(next((s for s in specs if s.name == RANDOM_WALK), default))
    return ModelSelection(chosen, ensemble)
