"""What a walk-forward learned, carried to live forecasts.

Walk-forward evaluation and backtests recalibrate each model from its own realised errors and learn
the ensemble's weights online (:mod:`fmtrade.walkforward`). A live forecast (``fmtrade forecast``, the
served API, the agent) has no realised history at request time, so ``fmtrade calibrate`` runs
that same walk-forward over each symbol's most recent windows and keeps, per symbol, what the next
row would get: each calibrated model's conformal shift (:meth:`fmtrade.calibration.Conformal.latest_shift`),
the online weights' state after every realised row, and the ensemble's own shift when the ensemble is
recalibrated. :meth:`LiveState.apply` applies them to a live forecast of that symbol; symbols, models,
steps or levels the state does not hold are left raw and reported as such.

The state is as fresh as its run (``asof``, the last bar it saw): refresh it on a schedule (daily is
plenty at stride 24). It is a small JSON file written atomically.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fmtrade.calibration import Outcomes, mirrored_pairs, widen
from fmtrade.ensemble import EnsembleResult, OnlineWeights, combine, spread_80, walk_forward_ensemble
from fmtrade.errors import InputError
from fmtrade.evaluation import EvalParams, check_horizon, cut_windows, forecast_windows
from fmtrade.io import write_json_atomic
from fmtrade.metrics import wql_per_row
from fmtrade.models.base import Forecast, Forecaster
from fmtrade.walkforward import WalkForward


@dataclass(frozen=True)
class SymbolState:
    """One symbol's learned state: shifts ``{model: [H, P]}`` for level pairs ``pairs``, the weights' state."""

    asof: str
    horizon: int
    pairs: list[tuple[float, float]]
    shifts: dict[str, np.ndarray]
    weights: OnlineWeights
    ensemble_shift: np.ndarray | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "asof": self.asof, "horizon": self.horizon, "pairs": [list(p) for p in self.pairs],
            "shifts": {name: shift.tolist() for name, shift in self.shifts.items()},
            "weights": self.weights.to_dict(),
            "ensemble_shift": None if self.ensemble_shift is None else self.ensemble_shift.tolist(),
        }  # fmt: skip

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> SymbolState:
        w = doc["weights"]
        ensemble_shift = doc.get("ensemble_shift")
        return cls(
            asof=str(doc["asof"]),
            horizon=int(doc["horizon"]),
            pairs=[(float(lo), float(hi)) for lo, hi in doc["pairs"]],
            shifts={name: np.asarray(shift, dtype=np.float64) for name, shift in doc["shifts"].items()},
            weights=OnlineWeights(w["decay"], w["eta"], w["losses"], w["updates"], w["anchor"]),
            ensemble_shift=None if ensemble_shift is None else np.asarray(ensemble_shift, dtype=np.float64),
        )

    def shift_for(self, shift: np.ndarray, forecast: Forecast) -> tuple[list[tuple[int, int]], np.ndarray]:
        """``shift`` laid out for ``forecast``'s levels and horizon: NaN (left raw) for the steps past the
        state's horizon and the level pairs it does not hold."""
        pairs = mirrored_pairs(forecast.quantile_levels)
        out = np.full((forecast.horizon, len(pairs)), np.nan)
        steps = min(forecast.horizon, self.horizon)
        for k, (lo, hi) in enumerate(pairs):
            levels = (forecast.quantile_levels[lo], forecast.quantile_levels[hi])
            held = [j for j, p in enumerate(self.pairs) if all(map(math.isclose, p, levels))]
            if held:
                out[:steps, k] = shift[:steps, held[0]]
        return pairs, out


@dataclass(frozen=True)
class Applied:
    """A live ensemble after :meth:`LiveState.apply`: members as combined, their weights, what was calibrated."""

    ensemble: Forecast
    members: dict[str, Forecast]
    weights: dict[str, float]
    calibrated: list[str]
    asof: str


class LiveState:
    """Per-symbol learned states, loaded from (and saved to) one JSON file."""

    def __init__(self, symbols: Mapping[str, SymbolState] | None = None) -> None:
        self.symbols = dict(symbols or {})

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, {symbol: state.to_dict() for symbol, state in self.symbols.items()})

    @classmethod
    def load(cls, path: str | Path) -> LiveState:
        try:
            doc = json.loads(Path(path).read_text())
            return cls({symbol: SymbolState.from_dict(state) for symbol, state in doc.items()})
        except FileNotFoundError as exc:
            raise InputError("live_state", f"{path} does not exist (run `fmtrade calibrate`)") from exc
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InputError("live_state", f"{path} is not a live calibration state ({exc!r})") from exc

    @classmethod
    def load_if_present(cls, path: str | Path | None) -> LiveState | None:
        return cls.load(path) if path is not None and Path(path).is_file() else None

    def observe(
        self, symbol: str, losses: Mapping[str, float], asof: pd.Timestamp, horizon: int, levels: tuple[float, ...]
    ) -> dict[str, float]:
        """Fold one realised loss per member into ``symbol``'s online weights (the agent's outcomes, in the
        order they became known) and move its ``asof`` up to ``asof``, the last bar the losses saw. A symbol
        without a state starts one with no shifts (``horizon``, the pairs of ``levels``) and no record, so
        the weights' fallback holds until this first fold. Returns the new weights of the members in ``losses``."""
        state = self.symbols.get(symbol)
        if state is None:
            pairs = [(levels[lo], levels[hi]) for lo, hi in mirrored_pairs(levels)]
            state = SymbolState(asof.isoformat(), horizon, pairs, {}, OnlineWeights(), None)
        state.weights.observe(losses)
        latest = max(pd.Timestamp(state.asof), asof)
        self.symbols[symbol] = replace(state, asof=latest.isoformat())
        return state.weights.weights(losses)

    def apply(
        self, symbol: str | None, members: Mapping[str, Forecast], prior: Mapping[str, float],
        at: pd.Timestamp | None = None,
    ) -> Applied | None:  # fmt: skip
        """Recalibrate ``members`` from ``symbol``'s state, combine them with its learned weights
        (``prior``: the static weights, the learner's fallback) and recalibrate the ensemble; None when
        the state holds nothing for ``symbol``, or learned from bars after ``at`` (the forecast's last
        bar: a state from the future must never reach a forecast of the past, e.g. in a backtest)."""
        state = self.symbols.get(symbol) if symbol else None
        if state is None or not members or (at is not None and pd.Timestamp(state.asof) > at):
            return None
        calibrated = {}
        for name, fc in members.items():
            if name in state.shifts:
                pairs, shift = state.shift_for(state.shifts[name], fc)
                calibrated[name] = widen(fc, pairs, shift) if pairs else fc
        out = {name: calibrated.get(name, fc) for name, fc in members.items()}
        weights = state.weights.weights(out, prior)
        ensemble = combine(out, weights)
        if state.ensemble_shift is not None:
            pairs, shift = state.shift_for(state.ensemble_shift, ensemble)
            ensemble = widen(ensemble, pairs, shift) if pairs else ensemble
            ensemble = replace(ensemble, extras={**ensemble.extras, "uncertainty": spread_80(ensemble)})
        return Applied(ensemble, out, weights, sorted(calibrated), state.asof)


def apply_live_state(
    state: LiveState | None, symbol: str | None, result: EnsembleResult, prior: Mapping[str, float],
    at: pd.Timestamp | None = None,
) -> EnsembleResult:  # fmt: skip
    """``result`` with ``symbol``'s learned state applied (members recalibrated, learned weights, the
    ensemble recalibrated) and described in ``calibration``; unchanged without a usable state for
    ``symbol`` (see :meth:`LiveState.apply`)."""
    applied = state.apply(symbol, result.members, prior, at) if state is not None else None
    if applied is None:
        return result
    calibration = {
        "asof": applied.asof, "models": applied.calibrated, "learned_weights": True,
        "ensemble": state is not None and state.symbols[symbol or ""].ensemble_shift is not None,
    }  # fmt: skip
    return replace(result, ensemble=applied.ensemble, members=applied.members, weights=applied.weights,
                   calibration=calibration)  # fmt: skip


def learn_state(walk: WalkForward, forecasts: Mapping[str, Forecast], outcomes: Outcomes, asof: str) -> SymbolState:
    """What a row issued after every outcome of ``forecasts`` would get from ``walk``'s rules."""
    shifts = {
        name: shift
        for name, fc in forecasts.items()
        if name in walk.calibrated and (shift := walk.conformal.latest_shift(fc, outcomes)) is not None
    }
    processed = walk.apply(forecasts, outcomes)
    members = [name for name in forecasts if walk.ensemble is not None and name in walk.ensemble]
    learner = OnlineWeights(walk.decay, walk.eta)
    order, _ = outcomes.schedule()
    losses = {n: wql_per_row(processed[n].quantiles, processed[n].quantile_levels, outcomes.realised) for n in members}
    for row in order:
        learner.observe({name: float(loss[row]) for name, loss in losses.items()})
    ensemble_shift = None
    if walk.calibrate_ensemble and members:
        member_rows = {n: processed[n] for n in members}
        raw, _ = walk_forward_ensemble(member_rows, outcomes, OnlineWeights(walk.decay, walk.eta), walk.ensemble)
        ensemble_shift = walk.conformal.latest_shift(raw, outcomes)
    levels = next(iter(forecasts.values())).quantile_levels
    pairs = [(levels[lo], levels[hi]) for lo, hi in mirrored_pairs(levels)]
    horizon = outcomes.realised.shape[1]
    return SymbolState(asof, horizon, pairs, shifts, learner, ensemble_shift)


def recent_series(series: pd.Series, params: EvalParams, windows: int) -> pd.Series:
    """The tail of ``series`` that holds the last ``windows`` walk-forward windows (each a context plus a
    horizon, ``stride`` bars apart)."""
    if windows < 1:
        raise InputError("windows", f"must be at least 1, got {windows}")
    return series.iloc[-(params.context + params.horizon + params.stride * (windows - 1)) :]


def calibrate_symbol(
    symbol: str, series: pd.Series, forecasters: Mapping[str, Forecaster], params: EvalParams, walk: WalkForward,
    windows: int = 220,
) -> tuple[SymbolState, dict[str, str]]:  # fmt: skip
    """``symbol``'s state from its last ``windows`` windows, and the models that failed (name -> why)."""
    check_horizon(forecasters, params.horizon)
    recent = recent_series(series, params, windows)
    cut = cut_windows(recent, params, symbol, max(m.min_context for m in forecasters.values()))
    raw = forecast_windows(symbol, cut, forecasters, params)
    answered = {name: fc for name, fc in raw.items() if isinstance(fc, Forecast)}
    failed = {name: why for name, why in raw.items() if isinstance(why, str)}
    if not answered:
        raise InputError("models", f"{symbol}: every model failed: {failed}")
    outcomes = Outcomes.on_grid(cut.positions, params.horizon, cut.targets)
    asof = pd.Timestamp(recent.index[-1]).isoformat()
    return learn_state(walk, answered, outcomes, asof), failed
