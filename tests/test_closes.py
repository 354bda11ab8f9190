"""Latest-window reads for symbol requests: the cached window is exactly what a fresh read gives,
and a commit to the series (local or S3) is seen by the next call."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fmtrade.data.closes import LatestCloses, load_closes
from fmtrade.data.store import Store
from fmtrade.data.synthetic import SyntheticSpec, synthesize


def _bars(hours: int, seed: int = 4) -> pd.DataFrame:
    return synthesize(["SYNAUSDT"], SyntheticSpec(hours=hours, seed=seed)).bars["SYNAUSDT"]


def _next_bar(bars: pd.DataFrame, close: float) -> pd.DataFrame:
    row = bars.iloc[[-1]].copy()
    row.index = row.index + pd.Timedelta(hours=1)
    row.loc[:, ["open", "high", "low", "close"]] = close
    return row


def _check_window(store: Store, latest: LatestCloses, length: int) -> tuple[np.ndarray, pd.Timestamp]:
    window = latest.get("SYNAUSDT", "60", "linear", length)
    assert window is not None
    fresh = load_closes(store, "SYNAUSDT", "60", "linear")
    np.testing.assert_array_equal(window[0], fresh.to_numpy()[-length:])
    assert window[1] == fresh.index[-1]
    return window


def test_window_is_read_once_and_follows_commits(tmp_path) -> None:
    store = Store(str(tmp_path / "store"))
    bars = _bars(3000)
    bars = bars.drop(bars.index[-10])  # a real gap inside the window: NaN, never invented
    store.write_bars("linear", "SYNAUSDT", "60", bars)
    latest = LatestCloses(store)
    values, _ = _check_window(store, latest, 256)
    assert np.isnan(values[-10]) and np.isfinite(values[-1])
    for _ in range(3):
        _check_window(store, latest, 256)
    assert latest.reads == 1
    with pytest.raises(ValueError):
        values[0] = 1.0  # the cached window is shared by every request: read-only

    store.write_bars("linear", "SYNAUSDT", "60", _next_bar(bars, 12345.0))
    values, last = _check_window(store, latest, 256)
    assert values[-1] == 12345.0 and last == bars.index[-1] + pd.Timedelta(hours=1)
    assert latest.reads == 2
    _check_window(store, latest, 100)  # another length is another window
    assert latest.reads == 3
    assert latest.get("NOSUCHUSDT", "60", "linear", 256) is None


def test_least_recently_used_windows_are_dropped(tmp_path) -> None:
    store = Store(str(tmp_path / "store"))
    store.write_bars("linear", "SYNAUSDT", "60", _bars(500))
    latest = LatestCloses(store, max_windows=2)
    for length in (10, 20, 10, 30):  # 20 is the least recently used when 30 arrives
        latest.get("SYNAUSDT", "60", "linear", length)
    assert latest.reads == 3
    latest.get("SYNAUSDT", "60", "linear", 10)
    assert latest.reads == 3
    latest.get("SYNAUSDT", "60", "linear", 20)
    assert latest.reads == 4


def test_s3_commits_change_the_version(s3_root) -> None:
    store = Store(s3_root)
    bars = _bars(400)
    store.write_bars("linear", "SYNAUSDT", "60", bars)
    latest = LatestCloses(store)
    before = store.version("SYNAUSDT", "60", "linear")
    assert before and all(entry[0].endswith(".parquet") for entry in before)
    _check_window(store, latest, 128)
    _check_window(store, latest, 128)
    assert latest.reads == 1
    store.write_bars("linear", "SYNAUSDT", "60", _next_bar(bars, 777.0))
    assert store.version("SYNAUSDT", "60", "linear") != before
    values, _ = _check_window(store, latest, 128)
    assert values[-1] == 777.0 and latest.reads == 2
