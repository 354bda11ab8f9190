"""Store: layout, merge semantics, reads, gaps, funding/open interest, S3 via a local moto server."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fmtrade.data.store import BAR_COLUMNS, Gap, SeriesKey, Store, bar_open
from fmtrade.errors import InputError


def make_bars(start: str, n: int, freq: str = "h", seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    open_ = np.concatenate([[100.0], close[:-1]])
    index = pd.date_range(start, periods=n, freq=freq, tz="UTC", name="timestamp")
    return pd.DataFrame({
        "open": open_, "high": np.maximum(open_, close) * 1.001, "low": np.minimum(open_, close) * 0.999,
        "close": close, "volume": rng.uniform(1, 10, n), "turnover": rng.uniform(100, 1000, n),
    }, index=index)  # fmt: skip


def test_round_trip_and_layout(tmp_path):
    store = Store(str(tmp_path))
    bars = make_bars("2023-12-31 20:00", 10)
    assert store.write_bars("linear", "BTCUSDT", "60", bars) == 10
    out = store.read("BTCUSDT", "60")
    pd.testing.assert_frame_equal(out, bars, check_freq=False)
    assert out.index.name == "timestamp" and str(out.index.tz) == "UTC"
    assert list(out.columns) == list(BAR_COLUMNS)
    series_dir = tmp_path / "bars" / "category=linear" / "symbol=BTCUSDT" / "interval=60"
    assert sorted(p.name for p in series_dir.iterdir()) == ["2023.parquet", "2024.parquet"]
    assert store.series() == [SeriesKey("linear", "BTCUSDT", "60")]


def test_minute_bars_are_partitioned_by_month(tmp_path):
    store = Store(str(tmp_path))
    store.write_bars("spot", "ETHUSDT", "15", make_bars("2024-01-31 23:00", 12, freq="15min"))
    series_dir = tmp_path / "bars" / "category=spot" / "symbol=ETHUSDT" / "interval=15"
    assert sorted(p.name for p in series_dir.iterdir()) == ["2024-01.parquet", "2024-02.parquet"]
    assert len(store.read("ETHUSDT", "15", category="spot")) == 12


def test_merge_dedupes_new_wins_and_sorts(tmp_path):
    store = Store(str(tmp_path))
    bars = make_bars("2024-03-01", 48)
    store.write_bars("linear", "X", "60", bars.iloc[24:])
    revised = bars.iloc[:30].copy()
    revised.loc[revised.index[-1], "close"] = 123.0
    # 24 new bars; the 6 overlapping ones are replaced, not duplicated.
    assert store.write_bars("linear", "X", "60", revised.iloc[::-1]) == 24
    out = store.read("X", "60")
    assert len(out) == 48 and out.index.is_monotonic_increasing and out.index.is_unique
    assert out.loc[bars.index[29], "close"] == 123.0
    pd.testing.assert_frame_equal(out.iloc[30:], bars.iloc[30:], check_freq=False)
    # Writing identical data again adds nothing.
    assert store.write_bars("linear", "X", "60", out) == 0


def test_read_window_is_inclusive(tmp_path):
    store = Store(str(tmp_path))
    bars = make_bars("2022-12-30", 24 * 5)
    store.write_bars("linear", "X", "60", bars)
    out = store.read("X", "60", "2023-01-01 00:00", "2023-01-01T05:00:00Z")
    assert len(out) == 6 and out.index[0] == pd.Timestamp("2023-01-01", tz="UTC")
    assert store.read("X", "60", start="2030-01-01").empty
    assert store.read("NOPE", "60").empty


def test_temp_files_are_invisible(tmp_path):
    store = Store(str(tmp_path))
    store.write_bars("linear", "X", "60", make_bars("2024-01-01", 5))
    series_dir = tmp_path / "bars" / "category=linear" / "symbol=X" / "interval=60"
    (series_dir / ".2024.parquet.abc123.tmp").write_bytes(b"half a parquet file")
    assert len(store.read("X", "60")) == 5
    assert store.series() == [SeriesKey("linear", "X", "60")]


def test_gaps_report_missing_runs_without_inventing_bars(tmp_path):
    store = Store(str(tmp_path))
    bars = make_bars("2024-01-01", 100)
    holes = bars.drop(bars.index[[10, 11, 12, 50]])
    store.write_bars("linear", "X", "60", holes)
    gaps = store.gaps("X", "60")
    assert gaps == [
        Gap(bars.index[10], bars.index[12], 3),
        Gap(bars.index[50], bars.index[50], 1),
    ]
    assert len(store.read("X", "60")) == 96  # nothing filled in
    # A window wider than the data reports the missing edges too.
    wide = store.gaps("X", "60", start="2023-12-31 22:00", end=bars.index[-1] + pd.Timedelta(hours=2))
    assert wide[0] == Gap(pd.Timestamp("2023-12-31 22:00", tz="UTC"), pd.Timestamp("2023-12-31 23:00", tz="UTC"), 2)
    assert wide[-1].missing_bars == 2 and len(wide) == 4
    assert store.gaps("X", "60", start=bars.index[20], end=bars.index[40]) == []
    assert store.gaps("EMPTY", "60") == []


def test_gaps_on_calendar_intervals(tmp_path):
    store = Store(str(tmp_path))
    months = make_bars("2023-01-01", 12, freq="MS").drop(pd.Timestamp("2023-05-01", tz="UTC"))
    store.write_bars("spot", "X", "M", months)
    assert store.gaps("X", "M", category="spot") == [
        Gap(pd.Timestamp("2023-05-01", tz="UTC"), pd.Timestamp("2023-05-01", tz="UTC"), 1)
    ]
    weeks = make_bars("2024-01-01", 10, freq="7D")  # Mondays
    store.write_bars("spot", "X", "W", weeks.drop(weeks.index[3:5]))
    assert store.gaps("X", "W", category="spot") == [Gap(weeks.index[3], weeks.index[4], 2)]


@pytest.mark.parametrize(
    ("ts", "interval", "expected"),
    [
        ("2024-05-15 13:47", "60", "2024-05-15 13:00"),
        ("2024-05-15 13:47", "240", "2024-05-15 12:00"),
        ("2024-05-15 13:47", "D", "2024-05-15"),
        ("2024-05-15 13:47", "W", "2024-05-13"),  # Monday
        ("2024-05-15 13:47", "M", "2024-05-01"),
        ("2024-05-15 13:47", "15", "2024-05-15 13:45"),
    ],
)
def test_bar_open(ts, interval, expected):
    assert bar_open(pd.Timestamp(ts, tz="UTC"), interval) == pd.Timestamp(expected, tz="UTC")


def test_funding_and_open_interest_beside_bars(tmp_path):
    store = Store(str(tmp_path))
    index = pd.date_range("2024-01-01", periods=9, freq="8h", tz="UTC", name="timestamp")
    funding = pd.DataFrame({"funding_rate": np.linspace(-1e-4, 1e-4, 9)}, index=index)
    assert store.write_funding("linear", "X", funding) == 9
    pd.testing.assert_frame_equal(store.read_funding("X"), funding, check_freq=False)
    oi = pd.DataFrame({"open_interest": np.arange(5.0)}, index=index[:5])
    store.write_open_interest("linear", "X", "1h", oi)
    pd.testing.assert_frame_equal(store.read_open_interest("X", "1h"), oi, check_freq=False)
    assert (tmp_path / "funding" / "category=linear" / "symbol=X" / "2024.parquet").exists()
    assert store.series() == []  # funding alone is not a bar series
    with pytest.raises(InputError, match="interval_time"):
        store.read_open_interest("X", "2h")


def test_bad_input_is_rejected(tmp_path):
    store = Store(str(tmp_path))
    bars = make_bars("2024-01-01", 3)
    with pytest.raises(InputError, match="interval"):
        store.write_bars("linear", "X", "7", bars)
    with pytest.raises(InputError, match="category"):
        store.read("X", "60", category="futures")
    with pytest.raises(InputError, match="missing column"):
        store.write_bars("linear", "X", "60", bars.drop(columns="volume"))
    with pytest.raises(InputError, match="tz-aware"):
        store.write_bars("linear", "X", "60", bars.tz_localize(None))
    with pytest.raises(InputError, match="start"):
        store.read("X", "60", start="not a time")
    assert not (tmp_path / "bars").exists()
