"""Training corpora: which series a training run sees, and how they are cut into windows.

A corpus is a list of *sources*, each expanding to a few 1-D series:

* ``synthetic``: one seeded synthetic market (:mod:`fmtrade.data.synthetic`): the close
  prices of its five correlated assets (fat tails, volatility clusters, regimes, jumps);
* ``kernelsynth``: a batch of KernelSynth GP series (:mod:`fmtrade.data.kernelsynth`);
* ``store:SYMBOL``: a stored close series (regular bar grid, gaps as NaN).

Splits are by time, per series, so no validation target is ever trained on: the
training part ends ``gap`` bars (at least the horizon) before the split point, and
every validation window's *target* starts at or after it (its context may reach back
into older bars, as a forecast's would). A source is a plain dict so that Ray Data
can ship it to the task that expands it (:mod:`fmtrade.train.datasets`); the single-process
pretraining loop of ``fmtrade models build --pretrain-minutes`` uses the same functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from fmtrade.data.kernelsynth import kernel_synth
from fmtrade.data.synthetic import SyntheticSpec, synthesize
from fmtrade.errors import InputError

KINDS = ("synthetic", "kernelsynth", "store")
#: Assets per synthetic market (the generator's five volatility profiles).
MARKET_SYMBOLS = ("SYN0", "SYN1", "SYN2", "SYN3", "SYN4")
#: Share of each series (by time) used for training when no split date is given.
TRAIN_FRACTION = 0.8
#: With a test start date: the share of the bars before it held out for validation (early stopping).
HOLDOUT_FRACTION = 0.1

Source = dict[str, Any]


@dataclass(frozen=True)
class CorpusParams:
    """How big each source is."""

    markets: int = 2  # synthetic markets (5 series each)
    market_hours: int = 8000
    kernel_batches: int = 2  # KernelSynth sources
    kernel_series: int = 16  # series per KernelSynth source
    kernel_length: int = 1024
    seed: int = 0


@dataclass(frozen=True)
class Series:
    """One series and where its validation part starts (index of the first validation target)."""

    values: np.ndarray  # float64, NaN = missing
    split: int


def parse_corpus(items: Sequence[str]) -> list[str]:
    """Validate ``synthetic``, ``kernelsynth``, ``store:SYMBOL`` items (order kept, duplicates dropped)."""
    if not items:
        raise InputError("corpus", "at least one source is required (synthetic, kernelsynth, store:SYMBOL)")
    for item in items:
        kind, _, symbol = item.partition(":")
        if kind not in KINDS or (kind == "store") != bool(symbol):
            raise InputError("corpus", f"{item!r} is not one of synthetic, kernelsynth, store:SYMBOL")
    return list(dict.fromkeys(items))


def corpus_sources(items: Sequence[str], params: CorpusParams = CorpusParams()) -> list[Source]:
    """Expand corpus items into sources (each seeded differently)."""
    sources: list[Source] = []
    for item in parse_corpus(items):
        kind, _, symbol = item.partition(":")
        if kind == "synthetic":
            sources += [{"kind": kind, "seed": params.seed * 1000 + i, "symbol": ""} for i in range(params.markets)]
        elif kind == "kernelsynth":
            sources += [
                {"kind": kind, "seed": params.seed * 1000 + i, "symbol": ""} for i in range(params.kernel_batches)
            ]
        else:
            sources.append({"kind": kind, "seed": 0, "symbol": symbol})
    return sources


def split_at(index: pd.DatetimeIndex, val_start: pd.Timestamp) -> int:
    """Position of the first bar at or after ``val_start``; both sides must hold bars."""
    split = int(index.searchsorted(val_start, side="left"))
    if split <= 0 or split >= len(index):
        raise InputError("val_start", f"{val_start} leaves no training or no validation bars ({index[0]}..{index[-1]})")
    return split


def source_series(
    source: Source,
    params: CorpusParams = CorpusParams(),
    closes: pd.Series | None = None,
    val_start: pd.Timestamp | None = None,
) -> list[Series]:
    """The series of one source; a ``store`` source needs its close series in ``closes``.

    Without ``val_start`` each series is split at :data:`TRAIN_FRACTION` of its length. With
    ``val_start`` (fine-tuning) a stored series is cut before it -- the rest is the test period
    -- and the last :data:`HOLDOUT_FRACTION` of what remains is the validation part.
    """
    kind = source["kind"]
    if kind == "synthetic":
        spec = SyntheticSpec(hours=params.market_hours, seed=int(source["seed"]))
        market = synthesize(list(MARKET_SYMBOLS), spec)
        values = [market.bars[s]["close"].to_numpy(dtype=np.float64) for s in MARKET_SYMBOLS]
        return [Series(v, int(v.size * TRAIN_FRACTION)) for v in values]
    if kind == "kernelsynth":
        batch = kernel_synth(params.kernel_series, params.kernel_length, seed=int(source["seed"]))
        return [Series(v, int(v.size * TRAIN_FRACTION)) for v in batch]
    if kind == "store":
        if closes is None:
            raise InputError("corpus", f"store:{source['symbol']} needs its close series")
        values = closes.to_numpy(dtype=np.float64)
        if val_start is None:
            return [Series(values, int(values.size * TRAIN_FRACTION))]
        # Bars from val_start on are the test period: never trained on, never used for selection.
        end = split_at(pd.DatetimeIndex(closes.index), val_start)
        return [Series(values[:end], end - max(int(end * HOLDOUT_FRACTION), 1))]
    raise InputError("corpus", f"unknown source kind {kind!r}")


def cut(values: np.ndarray, length: int, stride: int, min_finite: float = 0.9) -> np.ndarray:
    """Windows ``[n, length]`` (float32) every ``stride`` bars, newest window aligned to the end;
    windows with fewer than ``min_finite`` observed values, or a NaN last context bar, are dropped."""
    if values.size < length:
        return np.empty((0, length), dtype=np.float32)
    starts = np.arange(values.size - length, -1, -stride)[::-1]
    windows = values[starts[:, None] + np.arange(length)[None, :]]
    keep = np.isfinite(windows).mean(axis=1) >= min_finite
    return windows[keep].astype(np.float32)


def split_windows(
    series: Series,
    context: int,
    horizon: int,
    stride: int,
    gap: int | None = None,
    max_train_bars: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(train, val)`` windows of ``context + horizon`` bars.

    Train windows lie entirely before ``split - gap`` (``gap`` defaults to, and may not be
    less than, ``horizon``). With ``max_train_bars`` (few-shot adaptation) training targets come
    only from the last that many of those bars; their contexts may reach further back, as a
    forecast's context would. Validation windows have their target at or after ``split``.
    """
    gap = horizon if gap is None else gap
    if gap < horizon:
        raise InputError("gap", f"must be at least the horizon ({horizon}), got {gap}")
    length = context + horizon
    end = max(series.split - gap, 0)
    start = 0 if max_train_bars is None else max(end - max_train_bars - context, 0)
    train = cut(series.values[start:end], length, stride)
    val = cut(series.values[max(series.split - context, 0) :], length, stride)
    return train, val
