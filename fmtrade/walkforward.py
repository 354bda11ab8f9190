"""Walk-forward post-processing of the models' forecasts: recalibrate, combine online, recalibrate.

The order is deliberate. Each member flagged for calibration is first recalibrated from its own
past errors (:mod:`fmtrade.calibration`); the ensemble then combines the members as they are
scored (calibrated or not), with weights learned from those same members' losses
(:func:`fmtrade.ensemble.walk_forward_ensemble`), so a member is weighted by the forecast it
actually contributes; finally the ensemble is recalibrated from its own errors, because a
weighted average of calibrated members is not calibrated (averaging quantiles keeps their
typical width, and the weights move). Every step uses only rows whose targets were realised
strictly before a row was issued, so nothing a row gets depends on bars at or after its time.

Evaluation (:mod:`fmtrade.evaluation`) and the backtest (:mod:`fmtrade.backtest.engine`) both call
:meth:`WalkForward.apply`; live forecasts get what it would give their next row from the state
:mod:`fmtrade.live_state` learns with it (``fmtrade calibrate``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from fmtrade.calibration import Conformal, Outcomes
from fmtrade.config import Settings
from fmtrade.ensemble import ENSEMBLE_NAME, OnlineWeights, spread_80, walk_forward_ensemble
from fmtrade.models.base import Forecast
from fmtrade.models.registry import ModelSpec


@dataclass(frozen=True)
class WalkForward:
    """Which models are recalibrated and whether (and from which members) the ensemble is built."""

    calibrated: frozenset[str] = frozenset()
    ensemble: Mapping[str, float] | None = None  # members and their static weights; None: no ensemble
    calibrate_ensemble: bool = False
    conformal: Conformal = field(default_factory=Conformal)
    decay: float = 0.95  # OnlineWeights' rule
    eta: float = 20.0

    @classmethod
    def from_registry(
        cls, specs: Sequence[ModelSpec], settings: Settings, ensemble: bool = True, calibrate: bool | None = None
    ) -> WalkForward:
        """Every spec an ensemble member (static weights as the fallback prior), recalibrated as its
        registry entry says (``calibrate`` True/False: every model), the ensemble as
        ``models.calibrate_ensemble`` says (never with ``calibrate=False``)."""
        return cls(
            calibrated=frozenset(s.name for s in specs if (s.calibrate if calibrate is None else calibrate)),
            ensemble={s.name: s.weight for s in specs} if ensemble else None,
            calibrate_ensemble=settings.models.calibrate_ensemble and calibrate is not False,
        )

    def apply(self, forecasts: Mapping[str, Forecast], outcomes: Outcomes) -> dict[str, Forecast]:
        """Every model's forecast as scored (recalibrated when flagged) plus ``ensemble`` when it has members."""
        out = {
            name: self.conformal.calibrate(fc, outcomes) if name in self.calibrated else fc
            for name, fc in forecasts.items()
        }
        members = {name: fc for name, fc in out.items() if self.ensemble is not None and name in self.ensemble}
        if members:
            ensemble, _ = walk_forward_ensemble(members, outcomes, OnlineWeights(self.decay, self.eta), self.ensemble)
            if self.calibrate_ensemble:
                ensemble = self.conformal.calibrate(ensemble, outcomes)
                ensemble = replace(ensemble, extras={**ensemble.extras, "uncertainty": spread_80(ensemble)})
            out[ENSEMBLE_NAME] = ensemble
        return out
