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

Weights are static (the registry's ``weight``, renormalised over the members that
answered), or learned online by :class:`OnlineWeights` from each member's realised
weighted quantile loss (:func:`fmtrade.metrics.wql_per_row`, one value per realised
window; :meth:`OnlineWeights.update` folds a batch's pooled WQL)::

    L_m <- decay * L_m + (1 - decay) * WQL_m       (the first loss sets L_m = WQL_m)
    w_m  ~ exp(-eta * (L_m / min_k L_k - 1))       over the members with a record

``decay = 0.95`` (a half-life of ~13.5 windows) and ``eta = 20``: a member 2% worse
than the best keeps 0.67 of its weight, 10% worse 0.14, and one twice as bad as the
best (an untrained zoo model against the random walk) ~2e-9, so the ensemble cannot
be dragged far from its best members. A member with no record yet gets weight 0
while others have one (it has not earned a place); when no member has a record, the
**random walk** (``random-walk``) takes all the weight if it is a member, else the
static weights apply. :func:`walk_forward_ensemble` runs the rule over a walk-forward:
each row is combined with the weights learned from the windows realised strictly
before it was issued (:class:`fmtrade.calibration.Outcomes`).

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
from typing import Any

import numpy as np

from fmtrade.calibration import Outcomes
from fmtrade.errors import FmtradeError, InputError
from fmtrade.io import write_json_atomic
from fmtrade.metrics import weighted_quantile_loss, wql_per_row
from fmtrade.models.base import (
    DEFAULT_QUANTILES,
    Covariates,
    Forecast,
    Forecaster,
    check_quantile_levels,
    interpolate_quantiles,
)

ENSEMBLE_NAME = "ensemble"
#: The member that holds the weight before any member has a record: the random walk's registry
#: name (``fmtrade.forecasting.RANDOM_WALK``; that module imports this one, so it is spelled here).
ANCHOR = "random-walk"


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
    calibration: dict[str, Any] | None = None  # what a live state changed (fmtrade.live_state), None: raw


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


def _check_members(forecasts: Mapping[str, Forecast]) -> list[str]:
    """The member names, after checking that they forecast the same rows, horizon and levels."""
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
    return names


def combine(forecasts: Mapping[str, Forecast], weights: Mapping[str, float] | None = None) -> Forecast:
    """Vincentize member forecasts of the same rows, horizon and levels (equal weights when
    ``weights`` is None); weights are renormalised over the members given."""
    names = _check_members(forecasts)
    first = forecasts[names[0]]
    w = normalise_weights(weights if weights is not None else dict.fromkeys(names, 1.0), names)
    if len(names) == 1:
        # The weighted average of one member is that member: the service combines every
        # one-model request, so skip the arithmetic (~0.1 ms of numpy calls per request).
        extras = {"disagreement": np.zeros_like(first.mean), "uncertainty": spread_80(first)}
        return Forecast(ENSEMBLE_NAME, first.mean, first.quantiles, first.quantile_levels, first.last_values, extras)
    return _vincentize(forecasts, np.array([[w[n]] for n in names]))


def _vincentize(forecasts: Mapping[str, Forecast], weights: np.ndarray) -> Forecast:
    """The weighted average of checked members with weights ``[M, B]`` (or ``[M, 1]`` for every row)."""
    names = list(forecasts)
    first = forecasts[names[0]]
    wv = np.broadcast_to(weights, (len(names), first.batch_size))
    means = np.stack([forecasts[n].mean for n in names])  # [M, B, H]
    quants = np.stack([forecasts[n].quantiles for n in names])  # [M, B, H, Q]
    medians = np.stack([forecasts[n].median for n in names])  # [M, B, H]
    centre = np.einsum("mb,mbh->bh", wv, medians)
    disagreement = np.sqrt(np.maximum(np.einsum("mb,mbh->bh", wv, (medians - centre) ** 2), 0.0))
    combined = Forecast(
        model=ENSEMBLE_NAME,
        mean=np.einsum("mb,mbh->bh", wv, means),
        quantiles=np.einsum("mb,mbhq->bhq", wv, quants),  # a weighted mean of monotone rows stays monotone
        quantile_levels=first.quantile_levels,
        last_values=first.last_values,
    )
    return replace(combined, extras={"disagreement": disagreement, "uncertainty": spread_80(combined)})


def spread_80(forecast: Forecast) -> np.ndarray:
    """The 90-10 quantile spread ``[B, H]`` (one interpolation for both levels)."""
    bounds = interpolate_quantiles(forecast.quantiles, forecast.quantile_levels, np.array([0.1, 0.9]))
    return bounds[..., 1] - bounds[..., 0]


class OnlineWeights:
    """Exponential weights on each member's decayed WQL relative to the best one's (module docstring)."""

    def __init__(
        self,
        decay: float = 0.95,
        eta: float = 20.0,
        losses: Mapping[str, float] | None = None,
        updates: Mapping[str, int] | None = None,
        anchor: str = ANCHOR,
    ) -> None:
        if not 0.0 <= decay < 1.0:
            raise InputError("decay", f"must be in [0, 1), got {decay}")
        if not (eta >= 0 and math.isfinite(eta)):
            raise InputError("eta", f"must be finite and >= 0, got {eta}")
        self.decay = float(decay)
        self.eta = float(eta)
        self.anchor = anchor
        self.losses: dict[str, float] = {k: float(v) for k, v in (losses or {}).items()}
        self.updates: dict[str, int] = {k: int(v) for k, v in (updates or {}).items()}

    @property
    def has_history(self) -> bool:
        return bool(self.losses)

    def weights(self, names: Iterable[str], prior: Mapping[str, float] | None = None) -> dict[str, float]:
        """Normalised weights for ``names``; without any record: the anchor alone when it is named,
        else ``prior`` (equal weights when None)."""
        names = list(names)
        if not names:
            raise InputError("names", "no members to weight")
        known = {n: self.losses[n] for n in names if n in self.losses}
        if not known:
            if self.anchor in names:
                return {n: float(n == self.anchor) for n in names}
            return normalise_weights(prior if prior is not None else dict.fromkeys(names, 1.0), names)
        best = max(min(known.values()), np.finfo(float).tiny)
        raw = {n: math.exp(-self.eta * (known[n] / best - 1.0)) if n in known else 0.0 for n in names}
        return normalise_weights(raw, names)

    def observe(self, losses: Mapping[str, float]) -> None:
        """Fold one realised loss per member into its decayed loss (non-finite losses are skipped)."""
        for name, loss in losses.items():
            if not math.isfinite(loss):
                continue
            previous = self.losses.get(name)
            self.losses[name] = loss if previous is None else self.decay * previous + (1.0 - self.decay) * loss
            self.updates[name] = self.updates.get(name, 0) + 1

    def update(
        self, forecasts_by_member: Mapping[str, Forecast], realised: np.ndarray | Sequence[Sequence[float]]
    ) -> dict[str, float]:
        """Fold each member's pooled WQL on ``realised`` ``[B, H]`` into its decayed loss; returns the new
        weights of the members updated."""
        if not forecasts_by_member:
            raise InputError("forecasts_by_member", "no member forecasts to score")
        scores = {
            name: weighted_quantile_loss(fc.quantiles, fc.quantile_levels, realised)
            for name, fc in forecasts_by_member.items()
        }
        self.observe(scores)
        return self.weights(scores)

    def to_dict(self) -> dict[str, object]:
        return {
            "decay": self.decay, "eta": self.eta, "anchor": self.anchor, "losses": self.losses, "updates": self.updates,
        }  # fmt: skip

    def save(self, path: str | Path) -> None:
        """Write the state as JSON, atomically."""
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> OnlineWeights:
        try:
            doc = json.loads(Path(path).read_text())
            return cls(doc["decay"], doc["eta"], doc["losses"], doc["updates"], doc["anchor"])
        except FileNotFoundError as exc:
            raise InputError("weights_state", f"{path} does not exist") from exc
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InputError("weights_state", f"{path} is not an ensemble weight state ({exc!r})") from exc


def walk_forward_ensemble(
    members: Mapping[str, Forecast],
    outcomes: Outcomes,
    learner: OnlineWeights,
    prior: Mapping[str, float] | None = None,
) -> tuple[Forecast, np.ndarray]:
    """The ensemble of every walk-forward row, each combined with the weights ``learner`` held when the
    row was issued: it is fed, in order, only the member losses of rows realised by then. Returns the
    ensemble and the weights ``[N, M]`` (members in the order given)."""
    names = _check_members(members)
    losses = np.stack([wql_per_row(members[n].quantiles, members[n].quantile_levels, outcomes.realised) for n in names])
    order, counts = outcomes.schedule()
    weights = np.zeros((len(outcomes), len(names)))
    folded = 0
    for row in np.argsort(outcomes.issued, kind="stable"):
        for past in order[folded : counts[row]]:
            learner.observe(dict(zip(names, losses[:, past], strict=True)))
        folded = max(folded, int(counts[row]))
        chosen = learner.weights(names, prior)
        weights[row] = [chosen[n] for n in names]
    return _vincentize(members, weights.T), weights


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
        """Learned weights (with the learner's fallback: the random walk, else the static weights),
        or the static ones without a learner; normalised over ``names``."""
        names = list(names)
        if self.learner is not None:
            return self.learner.weights(names, self.static_weights)
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
