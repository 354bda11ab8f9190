"""Combine member forecasts into one probabilistic forecast named ``ensemble``.

Combination (:func:`combine`) is weighted quantile averaging (Vincentization): the
ensemble's level-``q`` quantile is ``sum_m w_m q_m``, its mean ``sum_m w_m mean_m``.
Averaging quantiles (not mixing distributions) keeps the ensemble's spread near
its members' typical spread instead of widening it by their disagreement, so the
disagreement is reported separately in ``Forecast.extras``:

- ``disagreement`` ``[B, H]``: weighted standard deviation of the member medians,
  ``sqrt(sum_m w_m (med_m - sum_k w_k med_k)^2)`` (price units);
- ``uncertainty`` ``[B, H]``: the ensemble's 90-10 quantile spread (price units;
  read from the stored levels, extended linearly outside them as in ``Forecast``).

Weights are static (the registry's ``weight``), renormalised over the members that
answered, or learned online by :class:`OnlineWeights` from realised errors::

    L_m <- decay * L_m + (1 - decay) * WQL_m        (the first update sets L_m = WQL_m)
    w_m  = (1 / (L_m + eps)) / sum_k (1 / (L_k + eps))

with ``WQL`` from :func:`fmtrade.metrics.weighted_quantile_loss`, ``decay = 0.9``
(a half-life of ~6.6 updates) and ``eps = 1e-6`` (WQL of hourly crypto prices is
~1e-3..1e-2). A member with no loss history yet is given the mean loss of those
with one (neutral); with no history at all the static weights are used.

:meth:`Ensemble.forecast` calls its members concurrently in threads (the models'
numeric kernels release the GIL); a member that raises or has not answered within
the time budget is dropped for that call and reported in ``failed``. A member that
overran keeps running in its thread until it finishes; its result is discarded.
The call fails only when no member answered.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from fmtrade.errors import FmtradeError, InputError
from fmtrade.io import write_json_atomic
from fmtrade.metrics import weighted_quantile_loss
from fmtrade.models.base import (
    DEFAULT_QUANTILES,
    Covariates,
    Forecast,
    Forecaster,
    check_quantile_levels,
    interpolate_quantiles,
)

ENSEMBLE_NAME = "ensemble"


class EnsembleError(FmtradeError):
    """No member answered; ``failed`` maps each member to why."""

    def __init__(self, failed: Mapping[str, str]) -> None:
        self.failed = dict(failed)
        reasons = "; ".join(f"{name}: {reason}" for name, reason in self.failed.items()) or "no members"
        super().__init__(f"ensemble: no member answered ({reasons})")


@dataclass(frozen=True)
class EnsembleResult:
    """The combined forecast, each answering member's forecast, the weights used and the failures."""

    ensemble: Forecast
    members: dict[str, Forecast]
    weights: dict[str, float]
    failed: dict[str, str]


def normalise_weights(weights: Mapping[str, float], names: Iterable[str]) -> dict[str, float]:
    """``weights`` restricted to ``names`` and scaled to sum to one."""
    names = list(names)
    raw = {}
    for name in names:
        if name not in weights:
            raise InputError(f"weights.{name}", "no weight given for this member")
        value = float(weights[name])
        if not math.isfinite(value) or value < 0:
            raise InputError(f"weights.{name}", f"must be finite and >= 0, got {weights[name]!r}")
        raw[name] = value
    total = sum(raw.values())
    if total <= 0:
        raise InputError("weights", f"sum to zero over the members {', '.join(names)}")
    return {name: value / total for name, value in raw.items()}


def combine(forecasts: Mapping[str, Forecast], weights: Mapping[str, float] | None = None) -> Forecast:
    """Vincentize member forecasts of the same rows, horizon and levels (equal weights when
    ``weights`` is None); weights are renormalised over the members given."""
    if not forecasts:
        raise InputError("forecasts", "no member forecasts to combine")
    names = list(forecasts)
    first = forecasts[names[0]]
    for name in names[1:]:
        other = forecasts[name]
        if other.mean.shape != first.mean.shape or other.quantile_levels != first.quantile_levels:
            raise InputError(
                f"forecasts.{name}",
                f"shape {other.mean.shape} / levels {other.quantile_levels} differ from {names[0]}'s "
                f"{first.mean.shape} / {first.quantile_levels}",
            )
        if not np.allclose(other.last_values, first.last_values, rtol=1e-9, atol=0.0):
            raise InputError(f"forecasts.{name}", f"last values differ from {names[0]}'s: not the same contexts")
    w = normalise_weights(weights if weights is not None else dict.fromkeys(names, 1.0), names)
    if len(names) == 1:
        # The weighted average of one member is that member: the service combines every
        # one-model request, so skip the arithmetic (~0.1 ms of numpy calls per request).
        extras = {"disagreement": np.zeros_like(first.mean), "uncertainty": _spread_80(first)}
        return Forecast(ENSEMBLE_NAME, first.mean, first.quantiles, first.quantile_levels, first.last_values, extras)
    wv = np.array([w[n] for n in names])
    means = np.stack([forecasts[n].mean for n in names])  # [M, B, H]
    quants = np.stack([forecasts[n].quantiles for n in names])  # [M, B, H, Q]
    medians = np.stack([forecasts[n].median for n in names])  # [M, B, H]
    centre = np.tensordot(wv, medians, axes=1)
    disagreement = np.sqrt(np.maximum(np.tensordot(wv, (medians - centre) ** 2, axes=1), 0.0))
    combined = Forecast(
        model=ENSEMBLE_NAME,
        mean=np.tensordot(wv, means, axes=1),
        quantiles=np.tensordot(wv, quants, axes=1),  # a weighted mean of monotone rows stays monotone
        quantile_levels=first.quantile_levels,
        last_values=first.last_values,
    )
    return replace(combined, extras={"disagreement": disagreement, "uncertainty": _spread_80(combined)})


def _spread_80(forecast: Forecast) -> np.ndarray:
    """The 90-10 quantile spread ``[B, H]`` (one interpolation for both levels)."""
    bounds = interpolate_quantiles(forecast.quantiles, forecast.quantile_levels, np.array([0.1, 0.9]))
    return bounds[..., 1] - bounds[..., 0]


class OnlineWeights:
    """Inverse exponentially-decayed WQL weights (formula in the module docstring)."""

    def __init__(
        self,
        decay: float = 0.9,
        eps: float = 1e-6,
        losses: Mapping[str, float] | None = None,
        updates: Mapping[str, int] | None = None,
    ) -> None:
        if not 0.0 <= decay < 1.0:
            raise InputError("decay", f"must be in [0, 1), got {decay}")
        if not eps > 0:
            raise InputError("eps", f"must be > 0, got {eps}")
        self.decay = float(decay)
        self.eps = float(eps)
        self.losses: dict[str, float] = {k: float(v) for k, v in (losses or {}).items()}
        self.updates: dict[str, int] = {k: int(v) for k, v in (updates or {}).items()}

    @property
    def has_history(self) -> bool:
        return bool(self.losses)

    def weights(self, names: Iterable[str]) -> dict[str, float]:
        """Normalised weights for ``names``; members without history get the mean known loss."""
        names = list(names)
        if not names:
            raise InputError("names", "no members to weight")
        known = [self.losses[n] for n in names if n in self.losses]
        neutral = float(np.mean(known)) if known else 1.0
        inverse = {n: 1.0 / (self.losses.get(n, neutral) + self.eps) for n in names}
        return normalise_weights(inverse, names)

    def update(
        self, forecasts_by_member: Mapping[str, Forecast], realised: np.ndarray | Sequence[Sequence[float]]
    ) -> dict[str, float]:
        """Fold each member's WQL on ``realised`` ``[B, H]`` into its decayed loss; returns the new
        weights of the members updated."""
        if not forecasts_by_member:
            raise InputError("forecasts_by_member", "no member forecasts to score")
        scores = {
            name: weighted_quantile_loss(fc.quantiles, fc.quantile_levels, realised)
            for name, fc in forecasts_by_member.items()
        }
        for name, wql in scores.items():
            previous = self.losses.get(name)
            self.losses[name] = wql if previous is None else self.decay * previous + (1.0 - self.decay) * wql
            self.updates[name] = self.updates.get(name, 0) + 1
        return self.weights(scores)

    def to_dict(self) -> dict[str, object]:
        return {"decay": self.decay, "eps": self.eps, "losses": self.losses, "updates": self.updates}

    def save(self, path: str | Path) -> None:
        """Write the state as JSON, atomically."""
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> OnlineWeights:
        try:
            doc = json.loads(Path(path).read_text())
            return cls(doc["decay"], doc["eps"], doc["losses"], doc["updates"])
        except FileNotFoundError as exc:
            raise InputError("weights_state", f"{path} does not exist") from exc
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InputError("weights_state", f"{path} is not an ensemble weight state ({exc!r})") from exc


class Ensemble:
    """Members called concurrently, combined by :func:`combine` with static or learned weights."""

    def __init__(
        self,
        members: Mapping[str, Forecaster],
        weights: Mapping[str, float] | None = None,
        *,
        learner: OnlineWeights | None = None,
        time_budget_s: float | None = None,
        max_workers: int | None = None,
    ) -> None:
        if not members:
            raise InputError("members", "an ensemble needs at least one member")
        self.members = dict(members)
        self.static_weights = normalise_weights(weights or dict.fromkeys(self.members, 1.0), self.members)
        self.learner = learner
        self.time_budget_s = time_budget_s
        self.max_workers = max_workers or len(self.members)

    def weights_for(self, names: Iterable[str]) -> dict[str, float]:
        """Learned weights when the learner has history, else the static ones; normalised over ``names``."""
        names = list(names)
        if self.learner is not None and self.learner.has_history:
            return self.learner.weights(names)
        return normalise_weights(self.static_weights, names)

    def forecast(
        self,
        contexts: Sequence[Sequence[float] | np.ndarray],
        horizon: int,
        quantile_levels: Sequence[float] = DEFAULT_QUANTILES,
        covariates: Sequence[Covariates | None] | None = None,
        seeds: Sequence[int] | None = None,
        time_budget_s: float | None = None,
    ) -> EnsembleResult:
        """Forecast with every member within the time budget and combine those that answered."""
        levels = check_quantile_levels(quantile_levels)
        contexts = list(contexts)  # every member iterates the batch: a generator would serve only one
        budget = self.time_budget_s if time_budget_s is None else time_budget_s
        if budget is not None and not budget > 0:
            raise InputError("time_budget_s", f"must be > 0, got {budget}")
        pool = ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="fmtrade-ensemble")
        try:
            futures = {
                pool.submit(member.forecast, contexts, horizon, levels, covariates, seeds): name
                for name, member in self.members.items()
            }
            done, _ = wait(futures, timeout=budget)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)  # overrunning members are abandoned, not awaited
        answered: dict[str, Forecast] = {}
        failed: dict[str, str] = {}
        for future, name in futures.items():
            if future not in done:
                failed[name] = f"exceeded the time budget of {budget:g}s"
            elif (exc := future.exception()) is not None:
                failed[name] = f"{type(exc).__name__}: {exc}"
            else:
                answered[name] = future.result()
        if not answered:
            raise EnsembleError(failed)
        ordered = {name: answered[name] for name in self.members if name in answered}
        weights = self.weights_for(ordered)
        return EnsembleResult(combine(ordered, weights), ordered, weights, failed)

    def update(
        self, forecasts_by_member: Mapping[str, Forecast], realised: np.ndarray | Sequence[Sequence[float]]
    ) -> dict[str, float]:
        """Score members on realised values and return the new learned weights (needs a learner)."""
        if self.learner is None:
            raise InputError("learner", "this ensemble uses static weights; create it with learner=OnlineWeights()")
        return self.learner.update(forecasts_by_member, realised)
