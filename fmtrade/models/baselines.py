"""Statistical baselines: the yardsticks every foundation model is reported beside.

All baselines model **log prices** (relative to the last price, ``log(p / p_last)``)
and map back with ``p_last * exp(.)``: quantiles map exactly through the monotone
``exp``, forecasts stay positive, multiplicative price moves become additive (what
these models assume), and a forecast of "no change" is exactly the last price.
Contexts must therefore be positive. NaNs inside a context are filled forward with
:func:`fmtrade.models.base.impute_forward` (leading NaNs dropped): none of these
models masks missing values natively.

``RandomWalkForecaster`` (``random-walk``) is the honest anchor: its median is the
last price and its spread is the empirical distribution of the context's own
h-step log returns. Markets are close to a random walk, so a model that does not
beat it has learned nothing tradable.

The other baselines wrap ``statsforecast`` models (Naive, SeasonalNaive, AutoETS,
AutoARIMA, AutoTheta). Their prediction intervals are Gaussian in log space; a
quantile level ``q`` is read from the central interval of level
``100 * |2q - 1|`` (its lower bound for ``q < 0.5``, upper for ``q > 0.5``) and
``q = 0.5`` is the point forecast. The price mean applies the log-normal
correction ``exp(mu + s^2 / 2)`` with ``s`` recovered from the 80% interval.

Batching: each row is fitted with the model's own ``forecast(y, h, level=...)``.
``bench/baselines_batching.py`` (results in docs/BENCHMARKS.md) measured it on par with
``StatsForecast.forecast`` over a long-format frame on the 2-core VM (per-row /
StatsForecast 0.9-1.2 for Naive, AutoETS, AutoTheta), so the simpler per-row path is
used. ``n_jobs=2`` helped AutoETS (1.6x) but slowed Naive 5x; parallelism across rows
is left to Ray (backtest actors, serve replicas) rather than nested process pools.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import norm
from statsforecast.models import AutoARIMA, AutoETS, AutoTheta, Naive, SeasonalNaive

from fmtrade.errors import InputError
from fmtrade.models.base import Covariates, Forecaster, impute_forward

_SD_LEVEL = 80.0  # interval used to recover the log-space sd for the log-normal mean


class _LogPriceBaseline(Forecaster):
    """Shared construction and validation for baselines that model log prices."""

    family = "baseline"
    stochastic = False
    device = "cpu"
    #: Longest context used by default (a cost cap: these models have no hard limit).
    default_max_context = 8192
    #: Keyword options the baseline accepts (from the registry's ``options``).
    option_names: tuple[str, ...] = ()

    def __init__(
        self,
        name: str,
        checkpoint: str | None = None,
        *,
        max_batch_size: int = 256,
        context_length: int | None = None,
        **options: Any,
    ) -> None:
        if checkpoint is not None:
            raise InputError("checkpoint", f"{name} is a statistical baseline and has no weights to load")
        if unknown := sorted(set(options) - set(self.option_names)):
            raise InputError("options", f"{name} does not accept {', '.join(unknown)}")
        self.name = name
        self._configure(options)
        if context_length is not None and context_length < self.min_context:
            raise InputError("context_length", f"{context_length} is below {name}'s minimum {self.min_context}")
        self.max_batch_size = int(max_batch_size)
        self.max_context = min(context_length or self.default_max_context, self.default_max_context)

    def _configure(self, options: dict[str, Any]) -> None:
        """Read validated options (subclasses with options override)."""

    def _check_context(self, context: Any, row: int) -> np.ndarray:
        arr = super()._check_context(context, row)
        if (arr[np.isfinite(arr)] <= 0).any():
            raise InputError(f"contexts[{row}]", f"{self.name} models log prices and needs positive values")
        return arr


def _positive_int(options: dict[str, Any], key: str, default: int) -> int:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"options.{key}", f"must be a positive integer, got {value!r}")
    return int(value)


class RandomWalkForecaster(_LogPriceBaseline):
    """A driftless random walk: median = last price, spread from the context's own h-step log returns.

    For every step ``h`` the sample is the context's overlapping h-step log returns
    ``log p[t+h] - log p[t]``. With fewer than ``min_samples`` (default 32) of them
    (short contexts, long horizons) the sample is the 1-step returns scaled as a
    random walk would be, ``sqrt(h) * r1``. The sample is centred at its median: a
    context's drift is noise, and the anchor forecasts no direction. Quantiles use
    numpy's default (linear) interpolation of the sorted sample; the mean is
    ``last * mean(exp(r_h))`` over the same centred sample. Deterministic, and
    vectorised over the batch (one sort per step).
    """

    min_context = 3  # at least two 1-step returns
    option_names = ("min_samples",)

    def __init__(
        self,
        name: str = "random-walk",
        checkpoint: str | None = None,
        *,
        max_batch_size: int = 4096,
        context_length: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__(name, checkpoint, max_batch_size=max_batch_size, context_length=context_length, **options)

    def _configure(self, options: dict[str, Any]) -> None:
        self.min_samples = _positive_int(options, "min_samples", 32)

    def _predict(
        self,
        contexts: list[np.ndarray],
        horizon: int,
        quantile_levels: tuple[float, ...],
        covariates: list[Covariates | None],
        seeds: list[int],
    ) -> tuple[np.ndarray, np.ndarray]:
        rows = [np.log(impute_forward(c)) for c in contexts]
        lengths = np.array([r.size for r in rows])
        width = int(lengths.max())
        logp = np.full((len(rows), width), np.nan)  # right-aligned: the last price is column -1
        for i, r in enumerate(rows):
            logp[i, width - r.size :] = r
        levels = np.asarray(quantile_levels)
        r1 = np.diff(logp, axis=1)  # [b, width - 1], NaN in the padding
        mean = np.empty((len(rows), horizon))
        quant = np.empty((len(rows), horizon, levels.size))
        for h in range(1, horizon + 1):
            sample = np.full_like(r1, np.nan)
            if h < width:
                sample[:, h - 1 :] = logp[:, h:] - logp[:, :-h]
            counts = lengths - h
            fallback = counts < self.min_samples
            if fallback.any():
                sample[fallback] = np.sqrt(h) * r1[fallback]
                counts = np.where(fallback, lengths - 1, counts)
            ordered = np.sort(sample, axis=1)  # NaNs last
            ordered -= _sorted_sample_quantiles(ordered, counts, np.array([0.5]))
            quant[:, h - 1] = _sorted_sample_quantiles(ordered, counts, levels)
            mean[:, h - 1] = np.nanmean(np.exp(ordered), axis=1)
        last = np.array([c[-1] for c in contexts])  # exactly the last price, not exp(log(last))
        return last[:, None] * mean, last[:, None, None] * np.exp(quant)


def _sorted_sample_quantiles(sorted_rows: np.ndarray, counts: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Linear-interpolated quantiles ``[b, Q]`` of rows sorted ascending with NaN padding at
    the end, row ``i`` holding ``counts[i]`` valid values (numpy's default method)."""
    pos = levels[None, :] * (counts[:, None] - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, counts[:, None] - 1)
    frac = pos - lo
    low = np.take_along_axis(sorted_rows, lo, axis=1)
    high = np.take_along_axis(sorted_rows, hi, axis=1)
    return low + frac * (high - low)


class _StatsForecastBaseline(_LogPriceBaseline):
    """A statsforecast model fitted per row on log prices; Gaussian intervals -> quantiles."""

    season_length_default = 1
    default_max_context = 2048
    min_context = 8
    option_names: tuple[str, ...] = ("season_length",)

    def _configure(self, options: dict[str, Any]) -> None:
        self.season_length = _positive_int(options, "season_length", self.season_length_default)

    def _model(self) -> Any:
        raise NotImplementedError

    def _predict(
        self,
        contexts: list[np.ndarray],
        horizon: int,
        quantile_levels: tuple[float, ...],
        covariates: list[Covariates | None],
        seeds: list[int],
    ) -> tuple[np.ndarray, np.ndarray]:
        # level <-> quantile: q < 0.5 is lo-L, q > 0.5 is hi-L, with L = 100 * |2q - 1|.
        interval = [round(100.0 * abs(2.0 * q - 1.0), 10) for q in quantile_levels]
        requested = sorted({lv for lv in interval if lv > 0} | {_SD_LEVEL})
        z = norm.ppf(0.5 + _SD_LEVEL / 200.0)
        means, quants = [], []
        for context in contexts:
            # Fit log(p / last): the models are shift-invariant, and a zero forecast maps back to
            # exactly the last price (exp(log(last)) would be off by rounding and fake a direction).
            y = np.log(impute_forward(context) / context[-1])
            out = self._model().forecast(y=y, h=horizon, level=requested)
            mu = np.asarray(out["mean"], dtype=np.float64)
            columns = [
                mu if lv == 0 else out[f"{'lo' if q < 0.5 else 'hi'}-{lv}"]
                for q, lv in zip(quantile_levels, interval, strict=True)
            ]
            sd = (np.asarray(out[f"hi-{_SD_LEVEL}"]) - np.asarray(out[f"lo-{_SD_LEVEL}"])) / (2.0 * z)
            means.append(context[-1] * np.exp(mu + 0.5 * sd**2))
            quants.append(context[-1] * np.exp(np.stack(columns, axis=-1)))
        return np.stack(means), np.stack(quants)


class NaiveForecaster(_StatsForecastBaseline):
    """statsforecast ``Naive``: last value, residual sd growing with sqrt(h)."""

    min_context = 3
    default_max_context = 8192
    option_names = ()

    def _configure(self, options: dict[str, Any]) -> None:
        self.season_length = 1

    def _model(self) -> Any:
        return Naive()


class SeasonalNaiveForecaster(_StatsForecastBaseline):
    """statsforecast ``SeasonalNaive``: the value one season ago (default 24 bars = a day of hours)."""

    season_length_default = 24
    default_max_context = 8192

    def _configure(self, options: dict[str, Any]) -> None:
        super()._configure(options)
        self.min_context = self.season_length + 2  # at least two seasonal residuals for the interval

    def _model(self) -> Any:
        return SeasonalNaive(season_length=self.season_length)


class AutoETSForecaster(_StatsForecastBaseline):
    """statsforecast ``AutoETS`` (additive/none components are chosen on log prices)."""

    def _model(self) -> Any:
        return AutoETS(season_length=self.season_length)


class AutoARIMAForecaster(_StatsForecastBaseline):
    """statsforecast ``AutoARIMA``; slow (1-6 rows/s at context 512 on the 2-core VM)."""

    def _model(self) -> Any:
        return AutoARIMA(season_length=self.season_length)


class ThetaForecaster(_StatsForecastBaseline):
    """statsforecast ``AutoTheta`` with additive decomposition (multiplicative in price)."""

    def _model(self) -> Any:
        return AutoTheta(season_length=self.season_length, decomposition_type="additive")
