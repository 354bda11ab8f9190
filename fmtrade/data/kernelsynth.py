"""KernelSynth: synthetic series drawn from Gaussian-process priors with random kernel compositions.

After Ansari et al. 2024 (Chronos, Algorithm 1): pick ``j ~ U{1..max_kernels}`` kernels
with replacement from a bank, combine them with random ``+`` / ``*``, and draw one
sample path from the zero-mean GP prior with that covariance on ``length`` equally
spaced points of [0, 1]. The bank holds constant, white-noise, linear, RBF, rational
quadratic and periodic kernels; periods are in *bars* and include the hourly market
cycles (a day, a week, a month) as well as the generic ones of the paper, so the
corpus teaches seasonality, trends and smooth local structure that synthetic market
returns (a random walk with fat tails) do not contain.

Every draw comes from one ``numpy.random.Generator(PCG64(seed))``: a seed reproduces
the corpus. Sampling is an ``O(length^3)`` Cholesky factorisation per series, so keep
``length`` around 1-2k.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from threadpoolctl import threadpool_limits

from fmtrade.errors import InputError

#: Periods (in bars) of the periodic kernels: hourly cycles first, then the paper's generic ones.
PERIODS: tuple[int, ...] = (24, 48, 168, 336, 720, 7, 12, 14, 30, 52, 60, 90, 365)

Kernel = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (positions x [n], distances |x_i - x_j| [n, n])


def _bank(length: int) -> list[Kernel]:
    """The kernel bank for series of ``length`` points on [0, 1]."""

    def constant(x: np.ndarray, d: np.ndarray) -> np.ndarray:
        return np.ones_like(d)

    def white(x: np.ndarray, d: np.ndarray) -> np.ndarray:
        return 0.1 * (d == 0.0)

    def linear(sigma: float) -> Kernel:
        return lambda x, d: sigma**2 + np.outer(x, x)

    def rbf(scale: float) -> Kernel:
        return lambda x, d: np.exp(-0.5 * (d / scale) ** 2)

    def rational_quadratic(alpha: float) -> Kernel:
        return lambda x, d: (1.0 + d**2 / (2.0 * alpha)) ** -alpha

    def periodic(period: int) -> Kernel:
        p = period / length
        return lambda x, d: np.exp(-2.0 * np.sin(np.pi * d / p) ** 2)

    bank: list[Kernel] = [constant, white]
    bank += [linear(s) for s in (0.0, 1.0, 10.0)]
    bank += [rbf(s) for s in (0.1, 1.0, 10.0)]
    bank += [rational_quadratic(a) for a in (0.1, 1.0, 10.0)]
    bank += [periodic(p) for p in PERIODS if p < length]
    return bank


def _gp_sample(rng: np.random.Generator, cov: np.ndarray) -> np.ndarray:
    """One draw from N(0, cov); jitter grows until the Cholesky factorisation succeeds."""
    n = cov.shape[0]
    jitter = 1e-6 * max(float(np.mean(np.diag(cov))), 1e-12)
    for _ in range(8):
        try:
            factor = np.linalg.cholesky(cov + jitter * np.eye(n))
            return factor @ rng.standard_normal(n)
        except np.linalg.LinAlgError:
            jitter *= 10.0
    # Still not positive definite at a visible jitter: fall back to the eigendecomposition.
    values, vectors = np.linalg.eigh(cov)
    return vectors @ (np.sqrt(np.clip(values, 0.0, None)) * rng.standard_normal(n))


def kernel_synth(n_series: int, length: int = 1024, max_kernels: int = 5, seed: int = 0) -> np.ndarray:
    """``n_series`` KernelSynth series ``[n_series, length]`` (float64, mean zero a priori)."""
    if n_series < 1:
        raise InputError("n_series", f"must be positive, got {n_series}")
    if length < 16:
        raise InputError("length", f"must be at least 16, got {length}")
    if max_kernels < 1:
        raise InputError("max_kernels", f"must be positive, got {max_kernels}")
    rng = np.random.default_rng(seed)
    x = np.linspace(0.0, 1.0, length)
    d = np.abs(x[:, None] - x[None, :])
    bank = _bank(length)
    out = np.empty((n_series, length))
    # One BLAS thread: a multi-threaded Cholesky of this size is 10x slower on a busy small machine.
    with threadpool_limits(limits=1, user_api="blas"):
        for i in range(n_series):
            out[i] = _draw(rng, bank, x, d, max_kernels)
    return out


def _draw(rng: np.random.Generator, bank: list[Kernel], x: np.ndarray, d: np.ndarray, max_kernels: int) -> np.ndarray:
    """One series: a random composition of kernels from ``bank``, sampled once."""
    picks = rng.integers(0, len(bank), size=rng.integers(1, max_kernels + 1))
    cov = bank[picks[0]](x, d)
    for k in picks[1:]:
        cov = cov + bank[k](x, d) if rng.random() < 0.5 else cov * bank[k](x, d)
    return _gp_sample(rng, cov)
