"""Ray Data pipelines of (context, target) training windows.

Sources (:func:`fmtrade.data.corpus.corpus_sources`: synthetic markets, KernelSynth
batches, stored symbols) become a dataset of small rows; ``flat_map`` expands each
source in a Ray task into its series and cuts them into fixed-length windows with
the time-based split of :func:`fmtrade.data.corpus.split_windows` (train windows end
``horizon`` bars or more before the split, validation targets start at or after it).
The expanded dataset is materialised once and filtered into ``train`` and ``val``.
Rows hold only numeric columns (``window`` float32 ``[context + horizon]``, ``part``,
``series`` as an integer id) because ``iter_torch_batches`` cannot batch strings.

The trainer shards ``train`` across workers (Ray Train's ``get_dataset_shard``);
``val`` is small and every worker reads all of it, so validation metrics are
identical on every rank without a collective.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import pandas as pd
import ray

from fmtrade.data.corpus import CorpusParams, Source, source_series, split_windows
from fmtrade.errors import InputError
from fmtrade.training import MAX_VAL_WINDOWS, Geometry

TRAIN, VAL = 0, 1


@dataclass(frozen=True)
class WindowSpec:
    """Everything a Ray task needs to turn one source into windows."""

    geometry: Geometry
    params: CorpusParams = CorpusParams()
    stride: int | None = None  # default: half the horizon
    store_root: str | None = None
    interval: str = "60"
    category: str = "linear"
    val_start: pd.Timestamp | None = None
    max_train_bars: int | None = None
    until: pd.Timestamp | None = None  # stored bars strictly before it (pretraining cutoff)


def _expand(row: dict[str, Any], spec: WindowSpec) -> list[dict[str, Any]]:
    """One source -> its windows, tagged train/val and with an integer series id."""
    from fmtrade.data.closes import load_closes
    from fmtrade.data.store import Store

    source: Source = {"kind": row["kind"], "seed": int(row["seed"]), "symbol": row["symbol"]}
    closes = None
    if source["kind"] == "store":
        closes = load_closes(Store(spec.store_root or "."), source["symbol"], spec.interval, spec.category)
        if spec.until is not None:
            closes = closes[closes.index < spec.until]
            if closes.empty:
                raise InputError("until", f"store:{source['symbol']} has no bars before {spec.until}")
    geo = spec.geometry
    stride = spec.stride or max(geo.horizon // 2, 1)
    rows: list[dict[str, Any]] = []
    for i, series in enumerate(source_series(source, spec.params, closes=closes, val_start=spec.val_start)):
        train, val = split_windows(series, geo.context, geo.horizon, stride, max_train_bars=spec.max_train_bars)
        sid = int(row["id"]) * 1000 + i
        rows += [{"window": w, "part": TRAIN, "series": sid} for w in train]
        rows += [{"window": w, "part": VAL, "series": sid} for w in val]
    return rows


def window_datasets(sources: list[Source], spec: WindowSpec) -> tuple[ray.data.Dataset, ray.data.Dataset]:
    """``(train, val)`` datasets of windows; InputError when either is empty."""
    items = [{**source, "id": i} for i, source in enumerate(sources)]
    expanded = ray.data.from_items(items).flat_map(functools.partial(_expand, spec=spec)).materialize()
    train = expanded.filter(lambda r: r["part"] == TRAIN).materialize()
    val = expanded.filter(lambda r: r["part"] == VAL).limit(MAX_VAL_WINDOWS).materialize()
    need = f"{spec.geometry.context} + {spec.geometry.horizon} bars"
    if train.count() == 0:
        raise InputError("corpus", f"no training windows: every series is shorter than {need} before its split")
    if val.count() == 0:
        raise InputError("corpus", f"no validation windows: the validation parts are shorter than {need}")
    return train, val
