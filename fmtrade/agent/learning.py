"""Realised outcomes feed the ensemble's online weights: the live half of the walk-forward's rule.

When the loop fills in a decision's outcome, :meth:`WeightLearner.fold` scores each member's journaled
forecast on the realised closes and folds the losses into that symbol's
:class:`~fmtrade.ensemble.OnlineWeights` in the live state (:meth:`fmtrade.live_state.LiveState.observe`),
which the in-process forecaster holds as the same object, so the next forecast is combined with the
new weights. The state file is saved atomically after the outcome and the fold are journaled together:
a restart never folds an outcome twice (its outcome row exists), and a crash between the two loses
that one fold from the file, never doubles it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fmtrade.agent.members import MemberForecast
from fmtrade.agent.observe import DocumentForecasts, InProcessForecasts
from fmtrade.config import Settings
from fmtrade.live_state import LiveState


@dataclass(frozen=True)
class Fold:
    """One outcome folded in: each member's loss and the symbol's weights of those members after it."""

    losses: dict[str, float]
    weights: dict[str, float]


@dataclass
class WeightLearner:
    """The live state the forecasts use, the file it is saved to, and the rule that updates it."""

    path: Path
    state: LiveState

    def fold(self, symbol: str, members: Mapping[str, MemberForecast], closes: pd.Series) -> Fold | None:
        """Score ``members`` on ``closes`` and fold the losses into ``symbol``'s weights; None (nothing
        folded) while a step's close is unknown (a gap in the bars)."""
        if not members:
            return None
        first = next(iter(members.values()))
        realised = first.realised(closes)
        if realised is None or any(m.steps != first.steps for m in members.values()):
            return None
        losses = {name: member.loss(realised) for name, member in members.items()}
        weights = self.state.observe(symbol, losses, first.steps[-1], len(first.steps), first.levels)
        return Fold(losses, weights)

    def save(self) -> None:
        self.state.save(self.path)

    @classmethod
    def for_forecasts(cls, settings: Settings, forecasts: object) -> WeightLearner | None:
        """The learner of forecasts that show their members (None for others, e.g. the agent backtest's):
        in-process, the forecaster's own state (loaded from the settings' live state file, or a new one);
        through the served API, that file's state (the service reads the file when it loads)."""
        if not isinstance(forecasts, DocumentForecasts):
            return None
        path = settings.live_state_path()
        if isinstance(forecasts, InProcessForecasts):
            if forecasts.state is None:
                forecasts.state = LiveState.load_if_present(path) or LiveState()
            return cls(path, forecasts.state)
        return cls(path, LiveState.load_if_present(path) or LiveState())
