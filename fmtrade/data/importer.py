"""Import OHLCV bars from CSV or parquet files (exchange dumps) into the store.

A file is checked completely before anything is written: one bad row rejects the
whole file with its row number and the reason, because a silently repaired or
half-imported series is worse than none when money depends on it. Row numbers
are 1-based data rows (in a CSV with a header, row N is on line N + 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fmtrade.data.intervals import check_category, check_interval
from fmtrade.data.store import BAR_COLUMNS, Store, bar_open, iso
from fmtrade.errors import DataError, InputError

REQUIRED = ("timestamp", "open", "high", "low", "close", "volume")
PRICES = ("open", "high", "low", "close")


class BadFileError(DataError):
    """An import file failed validation; ``row`` is the 1-based data row (None for file-level problems)."""

    def __init__(self, path: str, reason: str, row: int | None = None) -> None:
        self.path, self.reason, self.row = path, reason, row
        where = f"row {row}: " if row is not None else ""
        super().__init__(f"{path}: {where}{reason}")


@dataclass(frozen=True)
class ImportResult:
    path: str
    category: str
    symbol: str
    interval: str
    rows: int
    new_bars: int
    first: pd.Timestamp
    last: pd.Timestamp

    def to_dict(self) -> dict[str, object]:
        return {
            "path": self.path, "category": self.category, "symbol": self.symbol, "interval": self.interval,
            "rows": self.rows, "new_bars": self.new_bars, "first": iso(self.first), "last": iso(self.last),
        }  # fmt: skip


def read_table(path: str | Path) -> pd.DataFrame:
    """Load a CSV or parquet file as raw columns (no type coercion yet)."""
    text = str(path)
    suffix = Path(text).suffix.lower()
    if not Path(text).exists():
        raise InputError("path", f"{text} does not exist")
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(text)
        if suffix in (".csv", ".txt") or text.endswith(".csv.gz"):
            return pd.read_csv(text, dtype=str, keep_default_na=False)
    except (ValueError, OSError) as exc:
        raise BadFileError(text, f"cannot be read: {exc}") from exc
    raise InputError("path", f"{text}: unsupported file type {suffix!r} (use .csv or .parquet)")


def _parse_timestamps(raw: pd.Series, path: str) -> pd.DatetimeIndex:
    """Datetimes, ISO strings, or epoch numbers (unit inferred from magnitude: s, ms, us or ns)."""
    if pd.api.types.is_datetime64_any_dtype(raw):
        parsed = pd.to_datetime(raw, utc=True)
    else:
        numbers = pd.to_numeric(raw, errors="coerce")
        if numbers.notna().all() and len(numbers):
            magnitude = float(np.abs(numbers).max())
            unit = "s" if magnitude < 1e11 else "ms" if magnitude < 1e14 else "us" if magnitude < 1e17 else "ns"
            parsed = pd.to_datetime(numbers.astype("int64"), unit=unit, utc=True)
        else:
            parsed = pd.to_datetime(raw, utc=True, errors="coerce", format="ISO8601")
    bad = np.flatnonzero(parsed.isna().to_numpy())
    if len(bad):
        raise BadFileError(path, f"timestamp {raw.iloc[bad[0]]!r} cannot be parsed", int(bad[0]) + 1)
    return pd.DatetimeIndex(parsed, name="timestamp").as_unit("ns")


def _first(mask: np.ndarray) -> int | None:
    hits = np.flatnonzero(mask)
    return int(hits[0]) if len(hits) else None


def _misaligned(index: pd.DatetimeIndex, interval: str) -> np.ndarray:
    """True where a timestamp is not a bar open time of ``interval``."""
    if interval.isdigit():
        return np.asarray(index != index.floor(f"{int(interval)}min"))
    return np.array([bar_open(ts, interval) != ts for ts in index], dtype=bool)


def validate_bars(raw: pd.DataFrame, interval: str, path: str = "<frame>") -> pd.DataFrame:
    """Check an OHLCV table row by row; return it in store form or raise BadFileError at the first bad row."""
    interval = check_interval(interval)
    columns = {str(c).strip().lower(): c for c in raw.columns}
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        have = ", ".join(map(str, raw.columns))
        raise BadFileError(path, f"missing required column(s) {', '.join(missing)} (have {have})")
    if raw.empty:
        raise BadFileError(path, "has no rows")
    index = _parse_timestamps(raw[columns["timestamp"]].reset_index(drop=True), path)
    values = {}
    for name in (*REQUIRED[1:], "turnover"):
        if name not in columns:
            continue
        numbers = pd.to_numeric(raw[columns[name]].reset_index(drop=True), errors="coerce")
        row = _first(numbers.isna().to_numpy())
        if row is not None:
            raise BadFileError(path, f"{name} {raw[columns[name]].iloc[row]!r} is not a number", row + 1)
        values[name] = numbers.to_numpy(dtype="float64")

    steps = np.diff(index.asi8)
    checks: list[tuple[np.ndarray, str]] = [
        (np.concatenate([[False], steps == 0]), "duplicate timestamp {ts}"),
        (np.concatenate([[False], steps < 0]), "timestamp {ts} is earlier than the previous row (not increasing)"),
        (_misaligned(index, interval), f"timestamp {{ts}} is not aligned to interval {interval}"),
    ]
    for name in PRICES:
        checks.append((~np.isfinite(values[name]), f"{name} is not finite"))
        checks.append((values[name] <= 0, f"{name} {{{name}}} is not positive"))
    checks += [
        (values["high"] < np.maximum(values["open"], values["close"]), "high {high} is below max(open, close)"),
        (values["low"] > np.minimum(values["open"], values["close"]), "low {low} is above min(open, close)"),
        (~np.isfinite(values["volume"]) | (values["volume"] < 0), "volume {volume} is negative or not finite"),
    ]
    if "turnover" in values:
        turnover = values["turnover"]
        checks.append((~np.isfinite(turnover) | (turnover < 0), "turnover {turnover} is negative or not finite"))
    failures = [(row, message) for mask, message in checks if (row := _first(mask)) is not None]
    if failures:
        row, message = min(failures, key=lambda item: item[0])
        fields = {name: values[name][row] for name in values} | {"ts": iso(index[row])}
        raise BadFileError(path, message.format(**fields), row + 1)
    frame = pd.DataFrame(values, index=index)
    if "turnover" not in frame:
        frame["turnover"] = np.nan  # unknown, not invented
    return frame.loc[:, list(BAR_COLUMNS)]


def import_file(store: Store, path: str | Path, symbol: str, interval: str, category: str = "spot") -> ImportResult:
    """Validate a whole file, then merge it into the store (nothing is written if any row is bad)."""
    category, interval = check_category(category), check_interval(interval)
    if not symbol or not symbol.strip():
        raise InputError("symbol", "must not be empty")
    bars = validate_bars(read_table(path), interval, str(path))
    added = store.write_bars(category, symbol, interval, bars)
    return ImportResult(str(path), category, symbol, interval, len(bars), added, bars.index[0], bars.index[-1])
