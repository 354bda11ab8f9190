"""Conformal recalibration of walk-forward quantile forecasts from the model's own past errors.

A model's raw quantiles are often too narrow or too wide (the zoo models badly so); recalibrating
each model from its own recent out-of-sample errors brings its intervals to their nominal coverage
without touching its median, so calibration fixes spread, never direction.

Timing (:class:`Outcomes`). Every forecast row has the time it was issued (the first bar it may not
see) and the time its whole target is known (``issued + horizon`` bars on a bar grid). A row issued
at ``t`` may learn only from rows known by ``t`` (``known <= t``): with horizon ``H``, the errors of
forecasts made at least ``H`` bars earlier. Rows whose target has a gap never serve as history.

Rule (:class:`Conformal`): conformalized quantile regression (Romano, Patterson & Candès 2019),
applied to each pair of mirrored levels ``(a, 1 - a)`` and each horizon step separately, in units of
the last price so that errors from calmer or wilder weeks are comparable::

    E_j = max(lo_j - y_j, y_j - hi_j) / last_j              the j-th past row's score (step h)
    c   = the ceil((n + 1)(1 - 2a))-th smallest of the n most recent scores (capped at the largest)
    lo <- lo - c * last,   hi <- hi + c * last              (c < 0 narrows a too-wide interval)

with ``n <= window`` (default 200 rows: on 2022 hourly XRP and BTC, 50 or 100 rows cost the
already well-calibrated random walk 0.2-0.6% WQL in estimation noise, 200 rows 0.1%). Rows with
fewer than ``min_history`` (default 20) realised past errors are left as forecast. The 0.5 level
and any level without its mirror are left alone, a narrowed interval stops at the median (so the
median, and with it the directional call, never moves), the quantiles are then sorted along the
levels (a monotone rearrangement, which never raises the quantile loss), and the mean is unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from fmtrade.errors import InputError
from fmtrade.models.base import Forecast


@dataclass(frozen=True)
class Outcomes:
    """When each forecast row was issued, when its target was fully known, and the target."""

    issued: np.ndarray  # [N]
    known: np.ndarray  # [N]: row j may inform a row issued at t iff known[j] <= t
    realised: np.ndarray  # [N, H], NaN where not observed (such rows never inform another)

    def __post_init__(self) -> None:
        realised = np.asarray(self.realised, dtype=np.float64)
        issued, known = np.asarray(self.issued), np.asarray(self.known)
        if realised.ndim != 2 or issued.shape != (realised.shape[0],) or known.shape != issued.shape:
            raise InputError("outcomes", f"expected issued/known [N] and realised [N, H], got {realised.shape}")
        if (known <= issued).any():
            raise InputError("outcomes", "a row's target cannot be known by the time it is forecast")
        object.__setattr__(self, "realised", realised)
        object.__setattr__(self, "issued", issued)
        object.__setattr__(self, "known", known)

    @classmethod
    def on_grid(cls, positions: np.ndarray, horizon: int, realised: np.ndarray) -> Outcomes:
        """Rows issued at bar ``positions`` of a regular grid: each target is known ``horizon`` bars later."""
        positions = np.asarray(positions, dtype=np.int64)
        return cls(positions, positions + int(horizon), realised)

    def __len__(self) -> int:
        return int(self.issued.shape[0])

    def schedule(self) -> tuple[np.ndarray, np.ndarray]:
        """(the fully realised rows in the order their targets became known, and for each row how many
        of them were known when it was issued): row ``i`` may learn from ``order[:counts[i]]``."""
        usable = np.flatnonzero(np.isfinite(self.realised).all(axis=1))
        order = usable[np.argsort(self.known[usable], kind="stable")]
        counts = np.searchsorted(self.known[order], self.issued, side="right")
        return order, counts


def mirrored_pairs(levels: tuple[float, ...]) -> list[tuple[int, int]]:
    """Index pairs ``(lo, hi)`` of levels ``a < 0.5`` whose mirror ``1 - a`` is also forecast."""
    pairs = []
    for i, level in enumerate(levels):
        mirror = [k for k, other in enumerate(levels) if math.isclose(other, 1.0 - level, abs_tol=1e-9)]
        if level < 0.5 and mirror:
            pairs.append((i, mirror[0]))
    return pairs


@dataclass(frozen=True)
class Conformal:
    """Rolling conformal recalibration (rule in the module docstring)."""

    window: int = 200
    min_history: int = 20

    def __post_init__(self) -> None:
        if not 1 <= self.min_history <= self.window:
            raise InputError("conformal", f"need 1 <= min_history <= window, got {self.min_history}, {self.window}")

    def calibrate(self, forecast: Forecast, outcomes: Outcomes) -> Forecast:
        """``forecast`` (one row per outcome) with every row's intervals adjusted from earlier rows' errors."""
        pairs = mirrored_pairs(forecast.quantile_levels)
        if not pairs:
            return forecast
        scores, coverage = self._scores(forecast, outcomes, pairs)
        order, counts = outcomes.schedule()
        shifts = np.full((forecast.batch_size, forecast.horizon, len(pairs)), np.nan)
        for row, n in enumerate(counts):
            if n >= self.min_history:
                shifts[row] = _conformal_quantile(scores[order[max(0, n - self.window) : n]], coverage)
        return widen(forecast, pairs, shifts)

    def latest_shift(self, forecast: Forecast, outcomes: Outcomes) -> np.ndarray | None:
        """The shift ``[H, P]`` (units of the last price, pairs as :func:`mirrored_pairs`) that a row issued
        after every outcome is known would get; None with fewer than ``min_history`` realised rows."""
        pairs = mirrored_pairs(forecast.quantile_levels)
        order, _ = outcomes.schedule()
        if not pairs or len(order) < self.min_history:
            return None
        scores, coverage = self._scores(forecast, outcomes, pairs)
        return _conformal_quantile(scores[order[-self.window :]], coverage)

    @staticmethod
    def _scores(forecast: Forecast, outcomes: Outcomes, pairs: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
        """Every row's conformity scores ``[N, H, P]`` and each pair's nominal coverage ``[P]``."""
        if len(outcomes) != forecast.batch_size or outcomes.realised.shape[1] != forecast.horizon:
            raise InputError("outcomes", f"expected {forecast.batch_size} rows of {forecast.horizon} steps")
        lo, hi = (np.array(side) for side in zip(*pairs, strict=True))
        coverage = np.array([forecast.quantile_levels[h] - forecast.quantile_levels[low] for low, h in pairs])
        last = forecast.last_values[:, None, None]
        y = outcomes.realised[..., None]
        return np.maximum(forecast.quantiles[..., lo] - y, y - forecast.quantiles[..., hi]) / last, coverage


def widen(forecast: Forecast, pairs: list[tuple[int, int]], shifts: np.ndarray) -> Forecast:
    """Move each pair's bounds out by ``shifts`` ``[B, H, P]`` (or ``[H, P]`` for every row; units of the
    last price, negative narrows, NaN leaves a row alone), never across the median, then sort the levels."""
    shifts = np.broadcast_to(shifts, (forecast.batch_size, forecast.horizon, len(pairs)))
    lo, hi = (np.array(side) for side in zip(*pairs, strict=True))
    shift = np.nan_to_num(shifts) * forecast.last_values[:, None, None]
    median = forecast.median[..., None]
    quantiles = forecast.quantiles.copy()
    keep = np.isnan(shifts)
    quantiles[..., lo] = np.where(keep, quantiles[..., lo], np.minimum(quantiles[..., lo] - shift, median))
    quantiles[..., hi] = np.where(keep, quantiles[..., hi], np.maximum(quantiles[..., hi] + shift, median))
    return replace(forecast, quantiles=np.sort(quantiles, axis=-1))


def _conformal_quantile(scores: np.ndarray, coverage: np.ndarray) -> np.ndarray:
    """Per step and pair ``[H, P]``: the ``ceil((n + 1) * coverage)``-th smallest of ``scores`` ``[n, H, P]``."""
    n = scores.shape[0]
    rank = np.minimum(np.ceil((n + 1) * coverage - 1e-9).astype(int), n)  # 1-based
    ordered = np.sort(scores, axis=0)
    return ordered[rank - 1, :, np.arange(rank.size)].T
