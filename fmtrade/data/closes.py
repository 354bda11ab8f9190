"""Close prices as the models read them: on the regular bar grid, gaps as NaN.

``LatestCloses`` serves the most recent window of a stored series to every request that
names a symbol. Reading it costs a directory listing, the first and last files' time
columns and the files that hold the window: ~9 ms of CPU per request for a local store on
the 2-core VM, more than the whole HTTP serving path, and object-store round trips on S3.
The series changes only when a sync commits a file, and every commit renames a new file
into place, so the listing (:meth:`Store.version`) says whether the window read last time
still holds.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import pandas as pd

from fmtrade.data.intervals import interval_offset
from fmtrade.data.store import Store, bar_grid
from fmtrade.errors import InputError


def load_closes(
    store: Store, symbol: str, interval: str, category: str, start: Any = None, end: Any = None
) -> pd.Series:
    """Close prices on the regular bar grid: gaps in the store become NaN rows (never invented
    prices), which every model handles (native masking or forward imputation)."""
    bars = store.read(symbol, interval, start, end, category)
    if bars.empty:
        window = "" if start is None and end is None else f" between {start or '-'} and {end or '-'}"
        raise InputError("symbol", f"no {category}/{interval} bars stored for {symbol}{window} in {store.root}")
    closes = bars["close"]
    return closes.reindex(bar_grid(closes.index[0], closes.index[-1], interval))


class LatestCloses:
    """The last ``length`` closes of stored series with the open time of the last bar, re-read only
    when the series' files changed (least recently used windows beyond ``max_windows`` dropped).
    Safe to call from several threads."""

    def __init__(self, store: Store, max_windows: int = 256) -> None:
        self.store = store
        self.max_windows = max_windows
        self.reads = 0  # windows read from the store (the rest came from the cache)
        self._windows: OrderedDict[tuple[str, str, str, int], tuple[tuple, np.ndarray, pd.Timestamp]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, symbol: str, interval: str, category: str, length: int) -> tuple[np.ndarray, pd.Timestamp] | None:
        """The window, or None when nothing is stored for the series."""
        key = (symbol, interval, category, length)
        version = self.store.version(symbol, interval, category)
        if not version:
            return None
        with self._lock:
            cached = self._windows.get(key)
            if cached is not None and cached[0] == version:
                self._windows.move_to_end(key)
                return cached[1], cached[2]
        window = self._read(symbol, interval, category, length)
        if window is None:  # the files went away between the listing and the read
            return None
        with self._lock:
            self.reads += 1
            self._windows[key] = (version, *window)
            self._windows.move_to_end(key)
            while len(self._windows) > self.max_windows:
                self._windows.popitem(last=False)
        return window

    def _read(self, symbol: str, interval: str, category: str, length: int) -> tuple[np.ndarray, pd.Timestamp] | None:
        bounds = self.store.bounds(symbol, interval, category)
        if bounds is None:
            return None
        start = bounds[1] - interval_offset(interval) * (length - 1)
        closes = load_closes(self.store, symbol, interval, category, start=start)
        values = closes.to_numpy(dtype=np.float64)[-length:]
        values.setflags(write=False)  # shared by every request that reads this window
        return values, pd.Timestamp(closes.index[-1])
