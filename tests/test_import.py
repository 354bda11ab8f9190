"""Importing OHLCV files: good files land in the store, each kind of bad file is rejected whole."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fmtrade.data.importer import BadFileError, import_file, validate_bars
from fmtrade.data.store import Store
from fmtrade.errors import InputError


def good_frame(n: int = 48) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    close = 50 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    open_ = np.concatenate([[50.0], close[:-1]])
    return pd.DataFrame({
        "timestamp": pd.date_range("2024-02-28", periods=n, freq="h", tz="UTC"),
        "open": open_, "high": np.maximum(open_, close) + 0.1, "low": np.minimum(open_, close) - 0.1,
        "close": close, "volume": rng.uniform(0, 5, n),
    })  # fmt: skip


def write_csv(path, frame: pd.DataFrame, epoch_ms: bool = True) -> str:
    out = frame.copy()
    if epoch_ms:
        out["timestamp"] = out["timestamp"].astype("int64") // 1_000_000
    out.to_csv(path, index=False)
    return str(path)


def test_csv_with_epoch_ms_imports(tmp_path):
    store = Store(str(tmp_path / "store"))
    frame = good_frame()
    result = import_file(store, write_csv(tmp_path / "x.csv", frame), "SOLUSDT", "60")
    assert (result.rows, result.new_bars, result.category) == (48, 48, "spot")
    stored = store.read("SOLUSDT", "60", category="spot")
    np.testing.assert_allclose(stored["close"].to_numpy(), frame["close"].to_numpy())
    assert stored.index[0] == frame["timestamp"].iloc[0]
    assert stored["turnover"].isna().all()  # not in the file: unknown, not invented


def test_parquet_and_iso_csv_and_turnover(tmp_path):
    store = Store(str(tmp_path / "store"))
    frame = good_frame().assign(turnover=lambda f: f["close"] * f["volume"])
    frame.to_parquet(tmp_path / "x.parquet")
    import_file(store, tmp_path / "x.parquet", "A", "60", category="linear")
    np.testing.assert_allclose(store.read("A", "60")["turnover"], frame["turnover"])
    iso = frame.assign(timestamp=frame["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
    iso.columns = [c.upper() for c in iso.columns]  # header case does not matter
    result = import_file(store, write_csv(tmp_path / "iso.csv", iso, epoch_ms=False), "A", "60", "linear")
    assert result.new_bars == 0  # same bars again


def _bad(frame: pd.DataFrame, row: int, column: str, value) -> pd.DataFrame:
    out = frame.astype({column: object}) if not isinstance(value, float) else frame.copy()
    out.loc[row, column] = value
    return out


def _swap_rows(frame: pd.DataFrame, a: int, b: int) -> pd.DataFrame:
    out = frame.copy()
    out.iloc[[a, b]] = out.iloc[[b, a]].to_numpy()
    return out


FRAME = good_frame()
BAD_FILES = {
    "missing column": (FRAME.drop(columns="volume"), None, "missing required column(s) volume"),
    "unparseable timestamp": (_bad(FRAME, 5, "timestamp", "yesterday"), 6, "cannot be parsed"),
    "non-numeric price": (_bad(FRAME, 7, "open", "abc"), 8, "open 'abc' is not a number"),
    "empty price": (_bad(FRAME, 9, "close", ""), 10, "is not a number"),
    "not increasing": (_swap_rows(FRAME, 10, 11), 12, "not increasing"),
    "duplicate timestamp": (
        pd.concat([FRAME.iloc[:21], FRAME.iloc[20:]], ignore_index=True),
        22,
        "duplicate timestamp",
    ),
    "misaligned": (
        _bad(FRAME, 30, "timestamp", FRAME["timestamp"][30] + pd.Timedelta(minutes=7)),
        31,
        "not aligned to interval 60",
    ),
    "zero price": (_bad(FRAME, 3, "low", 0.0), 4, "low 0.0 is not positive"),
    "negative price": (_bad(FRAME, 4, "open", -1.0), 5, "open -1.0 is not positive"),
    "infinite price": (_bad(FRAME, 6, "high", np.inf), 7, "high is not finite"),
    "high below body": (_bad(FRAME, 12, "high", float(FRAME["low"][12])), 13, "below max(open, close)"),
    "low above body": (_bad(FRAME, 14, "low", float(FRAME["high"][14])), 15, "above min(open, close)"),
    "negative volume": (_bad(FRAME, 16, "volume", -2.0), 17, "volume -2.0 is negative"),
    "no rows": (FRAME.iloc[:0], None, "has no rows"),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_bad_file_is_rejected_with_row_and_reason(tmp_path, kind, fmt):
    frame, row, reason = BAD_FILES[kind]
    if fmt == "parquet" and frame.dtypes.eq(object).any():
        frame = frame.astype(str)  # a mixed column becomes text in parquet, as in a sloppy export
    path = tmp_path / f"bad.{fmt}"
    if fmt == "csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path)
    store = Store(str(tmp_path / "store"))
    with pytest.raises(BadFileError) as info:
        import_file(store, path, "X", "60")
    assert info.value.row == row
    assert reason in str(info.value)
    assert (f"row {row}: " in str(info.value)) == (row is not None)
    assert not (tmp_path / "store").exists()  # nothing written


def test_rejected_file_leaves_existing_series_untouched(tmp_path):
    store = Store(str(tmp_path / "store"))
    import_file(store, write_csv(tmp_path / "good.csv", good_frame()), "X", "60")
    before = store.read("X", "60", category="spot")
    later = good_frame().assign(timestamp=lambda f: f["timestamp"] + pd.Timedelta(days=2))
    later.loc[40, "volume"] = -1.0
    with pytest.raises(BadFileError, match="row 41"):
        import_file(store, write_csv(tmp_path / "bad.csv", later), "X", "60")
    pd.testing.assert_frame_equal(store.read("X", "60", category="spot"), before)


def test_daily_alignment_and_bad_arguments(tmp_path):
    daily = good_frame(5).assign(timestamp=pd.date_range("2024-01-01", periods=5, freq="D", tz="UTC"))
    assert len(validate_bars(daily, "D")) == 5
    with pytest.raises(BadFileError, match="row 1: .*not aligned to interval D"):
        validate_bars(daily.assign(timestamp=daily["timestamp"] + pd.Timedelta(hours=1)), "D")
    store = Store(str(tmp_path / "store"))
    with pytest.raises(InputError, match="does not exist"):
        import_file(store, tmp_path / "missing.csv", "X", "60")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(InputError, match="unsupported file type"):
        import_file(store, tmp_path / "x.json", "X", "60")
    with pytest.raises(InputError, match="interval"):
        import_file(store, tmp_path / "x.json", "X", "17")
