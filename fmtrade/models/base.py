"""The forecasting interface every model family implements.

``Forecaster.forecast`` takes a batch of 1-D price contexts of varying length
and returns a :class:`Forecast` holding the mean ``[B, H]`` and quantiles
``[B, H, Q]``. Validation, truncation to ``max_context``, chunking to
``max_batch_size`` and monotone quantiles are handled here once, so adapters
only implement ``_predict`` on a validated chunk.

Risk (VaR / ES) is read from the forecast distribution of the horizon return
``r = P_{t+h} / P_t - 1``: the quantile function of ``r`` is piecewise linear
between the forecast quantile levels; below the lowest level it is extended
linearly with the slope of the two lowest levels (a conservative straight
tail, documented in docs/MODELS.md), which is how 99% figures are obtained from
a forecast whose lowest level is 0.01 or 0.05.
"""

from __future__ import annotations

import abc
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from fmtrade.errors import InputError

DEFAULT_QUANTILES: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
MAX_QUANTILES = 99

Covariates = Mapping[str, np.ndarray]

#: ``Forecaster.working_range`` of the neural (float32) families: mean |value| from 2**-10 (~0.001)
#: to 2**50 (~1e15). Measured on the zoo models (a 100-level random walk scaled by 10**k, fixed
#: seeds): below ~1e-4 TimesFM's normalisation (sigma < 1e-6 is treated as 1) returned a flat
#: line and Lag-Llama's scale floor (1e-6 (1 + |loc|)) a forecast ~100% off, then negative
#: prices; from ~1e20 Chronos-Bolt and Chronos-2 overflow float32. Token prices of 1e-5..1e-10
#: (PEPE, SATS, pairs quoted in BTC) are real.
NEURAL_WORKING_RANGE: tuple[float, float] = (2.0**-10, 2.0**50)


def check_quantile_levels(levels: Sequence[float], field_name: str = "quantiles") -> tuple[float, ...]:
    """Levels must be finite, strictly inside (0, 1), unique; returned sorted."""
    values = [float(q) for q in levels]
    if not values:
        raise InputError(field_name, "at least one quantile level is required")
    if len(values) > MAX_QUANTILES:
        raise InputError(field_name, f"at most {MAX_QUANTILES} levels, got {len(values)}")
    for q in values:
        if not math.isfinite(q) or not 0.0 < q < 1.0:
            raise InputError(field_name, f"level {q} is not strictly between 0 and 1")
    if len(set(values)) != len(values):
        raise InputError(field_name, "levels must be unique")
    return tuple(sorted(values))


@dataclass(frozen=True)
class Forecast:
    """A batch of probabilistic forecasts from one model (or the ensemble)."""

    model: str
    mean: np.ndarray  # [B, H]
    quantiles: np.ndarray  # [B, H, Q], non-decreasing along Q
    quantile_levels: tuple[float, ...]
    last_values: np.ndarray  # [B], last observed value of each context (returns are relative to it)
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. ensemble disagreement [B, H]

    def __post_init__(self) -> None:
        mean = np.asarray(self.mean, dtype=np.float64)
        quantiles = np.asarray(self.quantiles, dtype=np.float64)
        last = np.asarray(self.last_values, dtype=np.float64)
        if mean.ndim != 2:
            raise ValueError(f"mean must be [B, H], got shape {mean.shape}")
        if quantiles.shape != (*mean.shape, len(self.quantile_levels)):
            raise ValueError(f"quantiles shape {quantiles.shape} does not match mean {mean.shape} x Q")
        if last.shape != (mean.shape[0],):
            raise ValueError(f"last_values must be [B], got {last.shape}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "quantiles", quantiles)
        object.__setattr__(self, "last_values", last)
        object.__setattr__(self, "quantile_levels", tuple(float(q) for q in self.quantile_levels))

    @property
    def batch_size(self) -> int:
        return int(self.mean.shape[0])

    @property
    def horizon(self) -> int:
        return int(self.mean.shape[1])

    def quantile(self, level: float) -> np.ndarray:
        """Quantile ``level`` per row and step ``[B, H]``, interpolated between stored levels."""
        return interpolate_quantiles(self.quantiles, self.quantile_levels, np.array([level]))[..., 0]

    @property
    def median(self) -> np.ndarray:
        return self.quantile(0.5)

    def expected_return(self, step: int = -1) -> np.ndarray:
        """Mean simple return from the last observation to ``step`` (default: the horizon end)."""
        return self.mean[:, step] / self.last_values - 1.0

    def return_quantiles(self, step: int = -1) -> np.ndarray:
        """Quantiles ``[B, Q]`` of the simple return to ``step``."""
        return self.quantiles[:, step, :] / self.last_values[:, None] - 1.0

    def value_at_risk(self, confidence: float = 0.95, step: int = -1) -> np.ndarray:
        """VaR ``[B]`` of a long position over the horizon: the loss (positive) not exceeded
        with probability ``confidence``."""
        alpha = 1.0 - confidence
        q = interpolate_quantiles(self.return_quantiles(step)[:, None, :], self.quantile_levels, np.array([alpha]))
        return -q[:, 0, 0]

    def expected_shortfall(self, confidence: float = 0.95, step: int = -1, grid: int = 200) -> np.ndarray:
        """ES ``[B]``: mean loss beyond the VaR, integrating the (interpolated, linearly
        extended) return quantile function over levels (0, 1 - confidence]."""
        alpha = 1.0 - confidence
        levels = (np.arange(grid) + 0.5) / grid * alpha  # midpoint rule on (0, alpha]
        q = interpolate_quantiles(self.return_quantiles(step)[:, None, :], self.quantile_levels, levels)
        return -q[:, 0, :].mean(axis=-1)

    def take(self, rows: Sequence[int] | np.ndarray) -> Forecast:
        """A forecast holding only ``rows`` of this batch."""
        idx = np.asarray(rows, dtype=int)
        return Forecast(
            model=self.model,
            mean=self.mean[idx],
            quantiles=self.quantiles[idx],
            quantile_levels=self.quantile_levels,
            last_values=self.last_values[idx],
            extras={k: v[idx] for k, v in self.extras.items()},
        )

    @staticmethod
    def concat(parts: Sequence[Forecast]) -> Forecast:
        """Stack forecasts of the same model, horizon and levels along the batch axis."""
        if not parts:
            raise ValueError("nothing to concatenate")
        first = parts[0]
        for part in parts[1:]:
            if part.quantile_levels != first.quantile_levels or part.horizon != first.horizon:
                raise ValueError("forecasts to concatenate must share horizon and quantile levels")
        keys = set(first.extras).intersection(*(p.extras for p in parts[1:]))
        return Forecast(
            model=first.model,
            mean=np.concatenate([p.mean for p in parts]),
            quantiles=np.concatenate([p.quantiles for p in parts]),
            quantile_levels=first.quantile_levels,
            last_values=np.concatenate([p.last_values for p in parts]),
            extras={k: np.concatenate([p.extras[k] for p in parts]) for k in sorted(keys)},
        )


def interpolate_quantiles(quantiles: np.ndarray, levels: Sequence[float], targets: np.ndarray) -> np.ndarray:
    """Evaluate the piecewise-linear quantile function ``[B, H, Q]`` at ``targets`` ``[T]``
    -> ``[B, H, T]``; outside the stored levels, extend with the slope of the two outermost
    levels (flat when only one level is stored)."""
    lv = np.asarray(levels, dtype=np.float64)
    if lv.size == 1:
        return np.repeat(quantiles, targets.size, axis=-1)
    idx = np.clip(np.searchsorted(lv, targets, side="right") - 1, 0, lv.size - 2)
    lo, hi = lv[idx], lv[idx + 1]
    weight = (targets - lo) / (hi - lo)
    return quantiles[..., idx] + weight * (quantiles[..., idx + 1] - quantiles[..., idx])


def fill_forward(context: np.ndarray) -> np.ndarray:
    """Fill NaNs with the last valid value before them: what a trader would have known at the
    time. Leading NaNs (nothing known yet) stay, so the length, and the alignment with covariates
    of the same bars, is kept."""
    idx = np.where(np.isfinite(context), np.arange(context.size), 0)
    np.maximum.accumulate(idx, out=idx)
    return context[idx]  # a leading position maps to index 0, itself NaN


def impute_forward(context: np.ndarray) -> np.ndarray:
    """:func:`fill_forward` without the leading NaNs: a gap-free series for models without native
    missing-value masking."""
    valid = np.isfinite(context)
    if valid.all():
        return context
    return fill_forward(context)[int(np.argmax(valid)) :]


def context_seed(context: np.ndarray) -> int:
    """A sampling seed from a context's values: the same series always gets the same draws (a
    repeated request, the same answer), different series get independent ones. One fixed seed
    for every row gave every forecast the same draws: one unlucky draw then put the Chronos T5
    zoo model's +1 h sample mean 9.5% of the price below its median on 126 of 128 BTC windows
    (10 of 128 differ by over 2% with a seed per window)."""
    digest = hashlib.blake2b(np.ascontiguousarray(context, dtype=np.float64).tobytes(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


def magnitude_exponent(context: np.ndarray, working_range: tuple[float, float]) -> int:
    """The power of two ``k`` that brings the mean absolute value of a context's finite values into
    ``working_range`` (0 when it is already there, or zero). Scaling by ``2**k`` is exact in
    floating point, so a model that normalises its input itself gives the same forecast for the
    scaled context, scaled back; only the scalers' floors and float32's range stop biting."""
    finite = np.abs(context[np.isfinite(context)])
    peak = float(finite.max())
    if peak == 0.0:
        return 0
    size = float(np.mean(finite / peak)) * peak  # no overflow near float64's largest values
    exponent = math.frexp(size)[1] - 1  # size in [2**exponent, 2**(exponent + 1))
    low, high = (math.floor(math.log2(v)) for v in working_range)
    if exponent < low:
        return low - exponent
    if exponent >= high:
        return high - 1 - exponent
    return 0


class Forecaster(abc.ABC):
    """A model that forecasts a batch of series. Subclasses implement ``_predict``."""

    #: Registry name of this instance (``random-walk``, ``chronos-bolt-fm-tiny`` ...).
    name: str
    #: Model family (``chronos``, ``chronos-bolt``, ``chronos2``, ``timesfm``, ``lagllama``, ``baseline``).
    family: str
    #: Longest context the model uses; longer contexts keep their most recent values.
    max_context: int = 8192
    #: Longest horizon the model forecasts honestly.
    max_horizon: int = 1024
    #: Fewest finite observations a context must have.
    min_context: int = 2
    #: Rows per internal model call; larger batches are chunked.
    max_batch_size: int = 256
    #: Covariate names the model uses (e.g. ``("volume", "funding")``); empty when none.
    covariates: tuple[str, ...] = ()
    #: Whether forecasts depend on a random seed (sampling models).
    stochastic: bool = False
    #: Resolved device (``cpu`` or ``cuda``).
    device: str = "cpu"
    #: Mean absolute context values the model's arithmetic handles; contexts outside are scaled
    #: by a power of two before ``_predict`` and the forecast scaled back. None: any value.
    working_range: tuple[float, float] | None = None

    def forecast(
        self,
        contexts: Sequence[Sequence[float] | np.ndarray],
        horizon: int,
        quantile_levels: Sequence[float] = DEFAULT_QUANTILES,
        covariates: Sequence[Covariates | None] | None = None,
        seeds: Sequence[int] | None = None,
    ) -> Forecast:
        """Forecast every context ``horizon`` steps ahead.

        ``seeds`` (one per row) make sampling models reproducible per row, independent
        of batch composition; deterministic models ignore them. Without them each row is
        seeded from its own values (:func:`context_seed`).
        """
        levels = check_quantile_levels(quantile_levels)
        horizon = self._check_horizon(horizon)
        rows = [self._check_context(ctx, i) for i, ctx in enumerate(contexts)]
        if not rows:
            raise InputError("contexts", "the batch is empty")
        if covariates is not None and len(covariates) != len(rows):
            raise InputError("covariates", f"expected {len(rows)} entries (one per context), got {len(covariates)}")
        if seeds is not None and len(seeds) != len(rows):
            raise InputError("seeds", f"expected {len(rows)} seeds (one per context), got {len(seeds)}")
        covs = [self._check_covariates(c, i, rows[i].size) for i, c in enumerate(covariates or [None] * len(rows))]
        row_seeds = [int(s) for s in seeds] if seeds is not None else [context_seed(r) for r in rows]
        shifts = np.array([magnitude_exponent(r, self.working_range) if self.working_range else 0 for r in rows])
        inputs = [np.ldexp(r, k) if k else r for r, k in zip(rows, shifts, strict=True)]
        means, quants = [], []
        step = max(1, int(self.max_batch_size))
        for start in range(0, len(rows), step):
            stop = start + step
            mean, quant = self._predict(inputs[start:stop], horizon, levels, covs[start:stop], row_seeds[start:stop])
            means.append(np.asarray(mean, dtype=np.float64))
            quants.append(np.asarray(quant, dtype=np.float64))
        mean = np.ldexp(np.concatenate(means), -shifts[:, None])
        quantiles = np.ldexp(np.sort(np.concatenate(quants), axis=-1), -shifts[:, None, None])  # sort: no crossing
        last = np.array([_last_finite(r) for r in rows])
        if not (np.isfinite(mean).all() and np.isfinite(quantiles).all()):
            raise FloatingPointError(f"{self.name} produced non-finite forecasts")
        return Forecast(self.name, mean, quantiles, levels, last)

    @abc.abstractmethod
    def _predict(
        self,
        contexts: list[np.ndarray],
        horizon: int,
        quantile_levels: tuple[float, ...],
        covariates: list[Covariates | None],
        seeds: list[int],
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(mean [b, H], quantiles [b, H, Q])`` for one validated chunk.

        Contexts are float64, truncated to ``max_context``, may hold NaNs (not all, and not
        the last value: a missing last value is filled forward), and have at least
        ``min_context`` finite values.
        """

    # Validation ---------------------------------------------------------------------
    def _check_horizon(self, horizon: int) -> int:
        if not isinstance(horizon, (int, np.integer)) or isinstance(horizon, bool) or horizon < 1:
            raise InputError("horizon", f"must be a positive integer, got {horizon!r}")
        if horizon > self.max_horizon:
            raise InputError("horizon", f"{horizon} exceeds {self.name}'s max_horizon {self.max_horizon}")
        return int(horizon)

    def _check_context(self, context: Sequence[float] | np.ndarray, row: int) -> np.ndarray:
        try:
            arr = np.asarray(context, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InputError(f"contexts[{row}]", f"not a numeric array ({exc})") from exc
        if arr.ndim != 1:
            raise InputError(f"contexts[{row}]", f"must be 1-D, got shape {arr.shape}")
        if arr.size == 0:
            raise InputError(f"contexts[{row}]", "is empty")
        if np.isinf(arr).any():
            raise InputError(f"contexts[{row}]", "contains infinite values")
        finite = int(np.isfinite(arr).sum())
        if finite == 0:
            raise InputError(f"contexts[{row}]", "has no finite values (all NaN)")
        arr = arr[-self.max_context :]
        finite = int(np.isfinite(arr).sum())
        if finite < self.min_context:
            raise InputError(
                f"contexts[{row}]", f"has {finite} finite values; {self.name} needs at least {self.min_context}"
            )
        if not np.isfinite(arr[-1]):
            arr = fill_forward(arr)  # not impute_forward: covariates of the same bars stay aligned
        return arr

    def _check_covariates(self, covs: Covariates | None, row: int, length: int) -> Covariates | None:
        if covs is None:
            return None
        out = {}
        for key, values in covs.items():
            arr = np.asarray(values, dtype=np.float64)[-self.max_context :]
            if arr.ndim != 1 or arr.size != length:
                raise InputError(f"covariates[{row}].{key}", f"must be 1-D with the context's length {length}")
            out[key] = arr
        return out


def _last_finite(context: np.ndarray) -> float:
    return float(context[np.isfinite(context)][-1])
