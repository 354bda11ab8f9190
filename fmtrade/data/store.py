"""Parquet store of bars, funding rates and open interest, on a local path or any fsspec URI.

Layout (hive-style, so pyarrow.dataset, duckdb or polars can read it directly)::

    root/bars/category=linear/symbol=BTCUSDT/interval=60/2024.parquet
    root/funding/category=linear/symbol=BTCUSDT/2024.parquet
    root/open_interest/category=linear/symbol=BTCUSDT/interval_time=1h/2024.parquet

Why one file per calendar period (a month for sub-hourly bars, a year otherwise):
a sync commits page by page, and a commit rewrites only the period files the page
touches (one or two, each at most ~45k rows), never the whole history. Every file
is replaced atomically (temp file + rename locally, one PUT on S3, see
:mod:`fmtrade.io`), so a kill mid-sync leaves every file either old or new, and
readers list only ``*.parquet`` (temp files are hidden ``.name.*.tmp``). Files of
a page are written in time order (newest first when back-filling), so an
interrupted commit still leaves a contiguous series. Reads of a window open only
the files that overlap it. One writer per series at a time is assumed.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections import namedtuple
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, TypeAlias, overload

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fmtrade.data.bybit import parse_time
from fmtrade.data.intervals import check_category, check_interval, interval_offset
from fmtrade.errors import DataError, InputError
from fmtrade.io import write_parquet_atomic

log = logging.getLogger(__name__)

BAR_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close", "volume", "turnover")
FUNDING_COLUMNS: tuple[str, ...] = ("funding_rate",)
OI_COLUMNS: tuple[str, ...] = ("open_interest",)
OI_INTERVALS: tuple[str, ...] = ("5min", "15min", "30min", "1h", "4h", "1d")
FUNDED_CATEGORIES: tuple[str, ...] = ("linear", "inverse")

SeriesKey = namedtuple("SeriesKey", ["category", "symbol", "interval"])
TimeLike: TypeAlias = str | pd.Timestamp | None

_ARROW_TS = pa.timestamp("ms", tz="UTC")


@dataclass(frozen=True)
class Gap:
    """A run of missing bars: ``start`` and ``end`` are the open times of the first and last missing bar."""

    start: pd.Timestamp
    end: pd.Timestamp
    missing_bars: int

    def to_dict(self) -> dict[str, Any]:
        return {"start": iso(self.start), "end": iso(self.end), "missing_bars": self.missing_bars}


class KlineSource(Protocol):
    """What :meth:`Store.sync` needs from a market data client (``BybitClient`` satisfies it)."""

    def server_time(self) -> pd.Timestamp: ...
    def iter_klines(
        self, category: str, symbol: str, interval: str, start: Any, end: Any
    ) -> Iterable[pd.DataFrame]: ...
    def klines(self, category: str, symbol: str, interval: str, start: Any, end: Any) -> pd.DataFrame: ...
    def funding_history(self, category: str, symbol: str, start: Any, end: Any) -> pd.DataFrame: ...
    def open_interest(self, category: str, symbol: str, interval_time: str, start: Any, end: Any) -> pd.DataFrame: ...


Progress = Callable[[str, int, int], None]
"""Called as ``progress(symbol, bars_done, bars_expected)`` after each committed page."""


@dataclass
class SymbolSync:
    symbol: str
    fetched_bars: int = 0
    new_bars: int = 0
    pages: int = 0
    new_funding: int = 0
    new_open_interest: int = 0
    rows: int = 0
    first: pd.Timestamp | None = None
    last: pd.Timestamp | None = None
    gaps: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["first"], out["last"] = iso(self.first), iso(self.last)
        return out


@dataclass
class SyncReport:
    category: str
    interval: str
    symbols: list[SymbolSync] = field(default_factory=list)

    @property
    def fetched_bars(self) -> int:
        return sum(s.fetched_bars for s in self.symbols)

    @property
    def new_bars(self) -> int:
        return sum(s.new_bars for s in self.symbols)

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.symbols)

    @property
    def bars_per_s(self) -> float:
        return self.fetched_bars / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "category": self.category,
            "interval": self.interval,
            "fetched_bars": self.fetched_bars,
            "new_bars": self.new_bars,
            "seconds": round(self.seconds, 3),
            "bars_per_s": round(self.bars_per_s, 1),
            "symbols": [s.to_dict() for s in self.symbols],
        }


@overload
def iso(ts: None) -> None: ...
@overload
def iso(ts: pd.Timestamp) -> str: ...
def iso(ts: pd.Timestamp | None) -> str | None:
    """ISO-8601 UTC with a ``Z`` suffix (what every JSON output of fmtrade uses)."""
    return None if ts is None else pd.Timestamp(ts).tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%SZ")


def to_utc(value: TimeLike, field_name: str = "time") -> pd.Timestamp | None:
    """Optional user time -> UTC Timestamp (ISO string, Timestamp or epoch ms; naive means UTC)."""
    return None if value is None else parse_time(value, field_name)


def bar_open(ts: pd.Timestamp, interval: str) -> pd.Timestamp:
    """Open time of the bar containing ``ts`` (Bybit: weeks open Monday 00:00 UTC, months on the 1st)."""
    interval = check_interval(interval)
    ts = pd.Timestamp(ts).tz_convert("UTC")
    if interval == "M":
        return ts.normalize().replace(day=1)
    if interval == "W":
        return ts.normalize() - pd.Timedelta(days=ts.weekday())
    if interval == "D":
        return ts.normalize()
    return ts.floor(f"{int(interval)}min")


def first_bar_at_or_after(ts: pd.Timestamp, interval: str) -> pd.Timestamp:
    opened = bar_open(ts, interval)
    return opened if opened == ts else opened + interval_offset(interval)


def bar_grid(start: pd.Timestamp, end: pd.Timestamp, interval: str) -> pd.DatetimeIndex:
    """Every bar open time from ``start`` to ``end`` inclusive (``start`` must be aligned)."""
    freq = "MS" if interval == "M" else interval_offset(interval)
    return pd.date_range(start, end, freq=freq, name="timestamp")


def empty_frame(columns: Iterable[str]) -> pd.DataFrame:
    index = pd.DatetimeIndex([], tz="UTC", name="timestamp").as_unit("ns")
    return pd.DataFrame({c: pd.Series(dtype="float64") for c in columns}, index=index)


def _monthly(interval: str | None) -> bool:
    return interval is not None and interval.isdigit() and int(interval) < 60


def _period_key(index: pd.DatetimeIndex, monthly: bool) -> np.ndarray:
    return np.asarray(index.strftime("%Y-%m" if monthly else "%Y"))


def _period_span(stem: str) -> tuple[pd.Timestamp, pd.Timestamp]:
    """[start, end) covered by a period file named ``2024`` or ``2024-01``."""
    start = pd.Timestamp(stem + ("-01" if len(stem) == 4 else "") + "-01", tz="UTC")
    end = start + (pd.offsets.YearBegin(1) if len(stem) == 4 else pd.offsets.MonthBegin(1))
    return start, end


#: Value columns of each kind of series, by the store's top-level directory.
_KIND_COLUMNS: dict[str, tuple[str, ...]] = {
    "bars": BAR_COLUMNS,
    "funding": FUNDING_COLUMNS,
    "open_interest": OI_COLUMNS,
}
#: Columns that must never be NaN (a price or rate the reader would otherwise trade on).
_NOT_NAN: dict[str, tuple[str, ...]] = {
    "bars": ("open", "high", "low", "close"),
    "funding": FUNDING_COLUMNS,
    "open_interest": OI_COLUMNS,
}
_PERIOD_NAME = re.compile(r"\d{4}(-(0[1-9]|1[0-2]))?")


class CorruptPartition(DataError):
    """A committed store file is not the partition its path promises. Raised instead of reading
    around it, so a damaged file never shows up as fewer bars; the message names the file and the fix."""

    def __init__(self, path: str, problem: str, fix: str) -> None:
        self.path, self.problem, self.fix = path, problem, fix
        super().__init__(f"{path}: {problem}; {fix}")


@dataclass(frozen=True)
class Partition:
    """Where a committed file sits in the layout: its kind, series key parts and period."""

    path: str
    kind: str
    keys: dict[str, str]
    period: str

    @property
    def columns(self) -> tuple[str, ...]:
        return _KIND_COLUMNS[self.kind]

    def span(self) -> tuple[pd.Timestamp, pd.Timestamp]:
        return _period_span(self.period)


@dataclass(frozen=True)
class PartitionCheck:
    """The outcome of verifying one committed file: ``problem`` and ``fix`` are None when it is sound."""

    path: str
    rows: int
    problem: str | None = None
    fix: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


def _schema_problem(schema: pa.Schema, columns: tuple[str, ...]) -> str | None:
    """Why ``schema`` is not a partition with a UTC timestamp column and float ``columns``, or None."""
    fields = {f.name: f.type for f in schema}
    if "timestamp" not in fields or not pa.types.is_timestamp(fields["timestamp"]):
        return "schema has no timestamp column"
    missing = [c for c in columns if c not in fields]
    if missing:
        return f"schema lacks column(s) {', '.join(missing)}"
    wrong = [c for c in columns if not pa.types.is_floating(fields[c])]
    return f"column(s) {', '.join(wrong)} are not floating point" if wrong else None


def _content_problem(frame: pd.DataFrame, part: Partition) -> str | None:
    """Why the rows of a readable partition break the store's invariants, or None."""
    index = frame.index
    if not index.is_unique:
        return f"{int(index.duplicated().sum())} duplicate timestamp(s)"
    if not index.is_monotonic_increasing:
        return "timestamps are not in increasing order"
    lo, hi = part.span()
    outside = int(((index < lo) | (index >= hi)).sum())
    if outside:
        return f"{outside} row(s) outside the period {part.period} the file name promises"
    nan = {c: int(n) for c in _NOT_NAN[part.kind] if (n := frame[c].isna().sum())}
    return f"NaN in {', '.join(f'{c} ({n} rows)' for c, n in nan.items())}" if nan else None


def _conform(df: pd.DataFrame, columns: tuple[str, ...], what: str) -> pd.DataFrame:
    """Check the frame is UTC-indexed with the store's columns; return float64 columns, sorted and deduped."""
    if not isinstance(df.index, pd.DatetimeIndex) or df.index.tz is None:
        raise InputError(what, "index must be a tz-aware DatetimeIndex of bar open times")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(what, f"missing column(s) {', '.join(missing)}")
    out = df.loc[:, list(columns)].astype("float64")
    out.index = df.index.tz_convert("UTC").as_unit("ns").rename("timestamp")
    out = out[~out.index.duplicated(keep="last")]
    return out.sort_index()


#: Listing fields that identify a committed file: local (inode, mtime) and S3 (ETag, time).
_VERSION_KEYS = ("name", "size", "ino", "mtime", "ETag", "LastModified")


class Store:
    """Market data store rooted at a local directory or an fsspec URI (``s3://bucket/prefix``)."""

    def __init__(self, root: str) -> None:
        self.root = str(root).rstrip("/")
        self.fs, self._base = fsspec.core.url_to_fs(self.root)

    def __repr__(self) -> str:
        return f"Store({self.root!r})"

    # Paths -----------------------------------------------------------------------------
    def _bars_dir(self, category: str, symbol: str, interval: str) -> str:
        check_category(category)
        check_interval(interval)
        return f"{self._base}/bars/category={category}/symbol={symbol}/interval={interval}"

    def _funding_dir(self, category: str, symbol: str) -> str:
        return f"{self._base}/funding/category={check_category(category)}/symbol={symbol}"

    def _oi_dir(self, category: str, symbol: str, interval_time: str) -> str:
        if interval_time not in OI_INTERVALS:
            raise InputError("interval_time", f"{interval_time!r} is not one of {', '.join(OI_INTERVALS)}")
        category = check_category(category)
        return f"{self._base}/open_interest/category={category}/symbol={symbol}/interval_time={interval_time}"

    def _files(self, directory: str) -> list[str]:
        """Committed period files of a series, oldest first (temp files never match)."""
        self.fs.invalidate_cache(directory)
        return sorted(self.fs.glob(f"{directory}/*.parquet"))

    # Low-level read/write --------------------------------------------------------------
    def _display(self, path: str) -> str:
        """A file's path as a user would type it (plain for local files, with the scheme otherwise)."""
        return self.fs.unstrip_protocol(path).removeprefix("file://")

    def _partition(self, path: str) -> Partition:
        """Parse a committed file's path; a name that is no period (``2024``, ``2024-01``) is refused."""
        parts = path[len(self._base) :].strip("/").split("/")
        keys = dict(p.split("=", 1) for p in parts[1:-1] if "=" in p)
        part = Partition(path, parts[0], keys, parts[-1].removesuffix(".parquet"))
        if not _PERIOD_NAME.fullmatch(part.period):
            raise CorruptPartition(
                self._display(path),
                "not a period file (named YYYY or YYYY-MM)",
                "move it out of the store; readers would otherwise take it for part of the series",
            )
        return part

    def _corrupt(self, part: Partition, problem: str) -> CorruptPartition:
        """The error for a bad partition, with the command that restores its period."""
        lo, hi = part.span()
        keys = part.keys
        sync = f"fmtrade data sync --symbols {keys.get('symbol')} --category {keys.get('category')}"
        sync += f" --interval {keys['interval']}" if "interval" in keys else ""
        sync += f" --open-interest {keys['interval_time']}" if "interval_time" in keys else ""
        sync += f" --start {iso(lo)}"
        files = self._files(part.path.rsplit("/", 1)[0])
        held = f"it held {part.kind} {'/'.join(keys.values())} from {iso(lo)} to before {iso(hi)}"
        if part.path in (files[0], files[-1]):
            fix = f"{held}: move it aside and re-sync (`{sync}` refetches it) or re-import that range"
        else:
            end = iso(hi - pd.Timedelta(seconds=1))
            fix = (
                f"{held}: move it aside, then re-import that range (`fmtrade data import`) or re-sync it into "
                f"an empty store and copy the file back (`{sync} --end {end} --store DIR`); "
                "a plain sync refetches only beyond the stored ends"
            )
        return CorruptPartition(self._display(part.path), problem, fix)

    def _read_file(self, path: str, columns: list[str] | None = None) -> pd.DataFrame:
        """One partition; a file that is unreadable or lacks the kind's columns raises :class:`CorruptPartition`."""
        part = self._partition(path)
        with self.fs.open(path, "rb") as handle:
            data = handle.read()  # parse from memory: any error below is the file's, not the transport's
        try:
            parquet = pq.ParquetFile(pa.BufferReader(data))
            problem = _schema_problem(parquet.schema_arrow, part.columns)
            table = None if problem else parquet.read(columns=columns)
        except (pa.ArrowException, OSError) as exc:
            problem, table = f"unreadable parquet ({exc})", None
        if table is None:
            raise self._corrupt(part, problem or "unreadable")
        frame = table.to_pandas()
        frame.index = pd.DatetimeIndex(frame.pop("timestamp")).as_unit("ns").rename("timestamp")
        return frame

    def _read(self, directory: str, columns: tuple[str, ...], start: TimeLike, end: TimeLike) -> pd.DataFrame:
        lo, hi = to_utc(start, "start"), to_utc(end, "end")
        parts = []
        for path in self._files(directory):
            span_lo, span_hi = self._partition(path).span()
            if (hi is not None and span_lo > hi) or (lo is not None and span_hi <= lo):
                continue
            parts.append(self._read_file(path))
        if not parts:
            return empty_frame(columns)
        frame = pd.concat(parts).loc[:, list(columns)]
        return frame.loc[lo:hi] if lo is not None or hi is not None else frame

    def _write(
        self, directory: str, df: pd.DataFrame, columns: tuple[str, ...], monthly: bool, newest_first: bool = False
    ) -> int:
        """Merge ``df`` into the period files (new rows win on equal timestamps); return rows added."""
        df = _conform(df, columns, "data")
        if df.empty:
            return 0
        added = 0
        groups = list(df.groupby(_period_key(df.index, monthly), sort=True))
        for key, part in reversed(groups) if newest_first else groups:
            path = f"{directory}/{key}.parquet"
            old = self._read_file(path) if self.fs.exists(path) else None
            merged = part if old is None else pd.concat([old, part])
            merged = merged[~merged.index.duplicated(keep="last")].sort_index()
            if old is not None and merged.equals(old):
                continue
            added += len(merged) - (0 if old is None else len(old))
            table = pa.Table.from_pandas(merged.reset_index(), preserve_index=False)
            table = table.set_column(0, "timestamp", table.column("timestamp").cast(_ARROW_TS))
            write_parquet_atomic(self.fs.unstrip_protocol(path), table)
        return added

    def _bounds(self, directory: str) -> tuple[pd.Timestamp, pd.Timestamp] | None:
        """First and last stored timestamp, reading only the first and last file's time column."""
        files = self._files(directory)
        if not files:
            return None
        first = self._read_file(files[0], columns=["timestamp"]).index
        last = first if len(files) == 1 else self._read_file(files[-1], columns=["timestamp"]).index
        return first[0], last[-1]

    # Bars -------------------------------------------------------------------------------
    def read(
        self, symbol: str, interval: str, start: TimeLike = None, end: TimeLike = None, category: str = "linear"
    ) -> pd.DataFrame:
        """Bars with open time in [start, end] (both inclusive), indexed by UTC open time; empty if none."""
        return self._read(self._bars_dir(category, symbol, interval), BAR_COLUMNS, start, end)

    def write_bars(self, category: str, symbol: str, interval: str, df: pd.DataFrame) -> int:
        """Merge bars into the store (dedupe on timestamp, new wins; sorted; atomic per file). Returns bars added."""
        return self._write(self._bars_dir(category, symbol, interval), df, BAR_COLUMNS, _monthly(interval))

    def bounds(self, symbol: str, interval: str, category: str = "linear") -> tuple[pd.Timestamp, pd.Timestamp] | None:
        return self._bounds(self._bars_dir(category, symbol, interval))

    def version(self, symbol: str, interval: str, category: str = "linear") -> tuple:
        """What the stored state of a series is, from one directory listing: each committed file's
        name, size and stamps. Every write renames a new file into place, so any change of the
        series changes this; ``()`` when nothing is stored."""
        directory = self._bars_dir(category, symbol, interval)
        self.fs.invalidate_cache(directory)
        try:
            entries = self.fs.ls(directory, detail=True)
        except FileNotFoundError:
            return ()
        files = (e for e in entries if e["name"].endswith(".parquet"))
        return tuple(sorted(tuple(str(e.get(key)) for key in _VERSION_KEYS) for e in files))

    def gaps(
        self, symbol: str, interval: str, category: str = "linear", start: TimeLike = None, end: TimeLike = None
    ) -> list[Gap]:
        """Runs of missing bars between ``start`` (default: first stored bar) and ``end`` (default: last).

        Only reports; the store never fills a gap with invented bars.
        """
        interval = check_interval(interval)
        index = self.read(symbol, interval, start, end, category).index
        lo = first_bar_at_or_after(to_utc(start), interval) if start is not None else None
        hi = bar_open(to_utc(end), interval) if end is not None else None
        lo = lo if lo is not None else (index[0] if len(index) else None)
        hi = hi if hi is not None else (index[-1] if len(index) else None)
        if lo is None or hi is None or lo > hi:
            return []
        grid = bar_grid(lo, hi, interval)
        missing = grid.difference(index)
        if missing.empty:
            return []
        positions = grid.get_indexer(missing)
        breaks = np.flatnonzero(np.diff(positions) != 1) + 1
        return [Gap(run[0], run[-1], len(run)) for run in np.split(missing, breaks)]

    def series(self) -> list[SeriesKey]:
        """Every stored bar series."""
        self.fs.invalidate_cache()
        keys = set()
        for path in self.fs.glob(f"{self._base}/bars/category=*/symbol=*/interval=*/*.parquet"):
            parts = dict(p.split("=", 1) for p in path.split("/")[-4:-1])
            keys.add(SeriesKey(parts["category"], parts["symbol"], parts["interval"]))
        return sorted(keys)

    def verify(self) -> list[PartitionCheck]:
        """Check every committed partition of every kind: readable, schema, strictly increasing timestamps
        inside the file's period, no NaN prices. Reads everything; meant for ``fmtrade data verify``."""
        self.fs.invalidate_cache()
        checks = []
        for kind in _KIND_COLUMNS:
            root = f"{self._base}/{kind}"
            paths = self.fs.find(root) if self.fs.exists(root) else []
            for path in sorted(p for p in paths if p.endswith(".parquet") and not p.rsplit("/", 1)[-1].startswith(".")):
                checks.append(self._check(path))
        return checks

    def _check(self, path: str) -> PartitionCheck:
        try:
            part = self._partition(path)
            frame = self._read_file(path)
        except CorruptPartition as exc:
            return PartitionCheck(exc.path, 0, exc.problem, exc.fix)
        problem = _content_problem(frame, part)
        fix = self._corrupt(part, problem).fix if problem else None
        return PartitionCheck(self._display(path), len(frame), problem, fix)

    # Funding and open interest ----------------------------------------------------------
    def read_funding(
        self, symbol: str, category: str = "linear", start: TimeLike = None, end: TimeLike = None
    ) -> pd.DataFrame:
        return self._read(self._funding_dir(category, symbol), FUNDING_COLUMNS, start, end)

    def write_funding(self, category: str, symbol: str, df: pd.DataFrame) -> int:
        return self._write(self._funding_dir(category, symbol), df, FUNDING_COLUMNS, monthly=False)

    def read_open_interest(
        self, symbol: str, interval_time: str, category: str = "linear", start: TimeLike = None, end: TimeLike = None
    ) -> pd.DataFrame:
        return self._read(self._oi_dir(category, symbol, interval_time), OI_COLUMNS, start, end)

    def write_open_interest(self, category: str, symbol: str, interval_time: str, df: pd.DataFrame) -> int:
        return self._write(self._oi_dir(category, symbol, interval_time), df, OI_COLUMNS, monthly=False)

    # Sync -------------------------------------------------------------------------------
    def sync(
        self,
        client: KlineSource,
        category: str,
        symbols: Iterable[str],
        interval: str,
        start: TimeLike,
        end: TimeLike = None,
        *,
        funding: bool = True,
        open_interest: str | None = None,
        progress: Progress | None = None,
    ) -> SyncReport:
        """Fetch only the bars missing at either end of each stored series, committing page by page.

        The bar still open at the exchange's clock (``client.server_time()``) is never stored.
        Holes inside the stored range are exchange outages; they are reported by :meth:`gaps`,
        not refetched on every sync. For linear/inverse, funding (``funding``) and open interest
        sampled every ``open_interest`` (e.g. ``"1h"``) are synced over the same range.
        """
        category, interval = check_category(category), check_interval(interval)
        if open_interest is not None and open_interest not in OI_INTERVALS:
            raise InputError("open_interest", f"{open_interest!r} is not one of {', '.join(OI_INTERVALS)}")
        lo = to_utc(start, "start")
        if lo is None:
            raise InputError("start", "a start time is required")
        open_bar = bar_open(client.server_time(), interval)
        last_closed = open_bar - interval_offset(interval)
        hi = last_closed if end is None else min(bar_open(to_utc(end, "end"), interval), last_closed)
        lo = first_bar_at_or_after(lo, interval)
        report = SyncReport(category, interval)
        for symbol in symbols:
            result = self._sync_symbol(client, category, symbol, interval, lo, hi, progress)
            if category in FUNDED_CATEGORIES:
                until = hi + interval_offset(interval)
                if funding:
                    result.new_funding = self._sync_records(
                        self._funding_dir(category, symbol),
                        FUNDING_COLUMNS,
                        lo,
                        until,
                        functools.partial(client.funding_history, category, symbol),
                    )
                if open_interest is not None:
                    result.new_open_interest = self._sync_records(
                        self._oi_dir(category, symbol, open_interest),
                        OI_COLUMNS,
                        lo,
                        until,
                        functools.partial(client.open_interest, category, symbol, open_interest),
                    )
            report.symbols.append(result)
        return report

    def _sync_symbol(
        self,
        client: KlineSource,
        category: str,
        symbol: str,
        interval: str,
        lo: pd.Timestamp,
        hi: pd.Timestamp,
        progress: Progress | None,
    ) -> SymbolSync:
        began = time.perf_counter()
        result = SymbolSync(symbol)
        directory = self._bars_dir(category, symbol, interval)
        self._remove_orphans(directory)
        step = interval_offset(interval)
        bounds = self._bounds(directory)
        forward_from = lo if bounds is None else max(lo, bounds[1] + step)
        backfill_to = None if bounds is None or lo >= bounds[0] else bounds[0] - step
        expected = (len(bar_grid(forward_from, hi, interval)) if forward_from <= hi else 0) + (
            len(bar_grid(lo, backfill_to, interval)) if backfill_to is not None else 0
        )

        def commit(page: pd.DataFrame, upper: pd.Timestamp, newest_first: bool) -> None:
            page = page.loc[(page.index >= lo) & (page.index <= upper)]
            result.fetched_bars += len(page)
            result.new_bars += self._write(directory, page, BAR_COLUMNS, _monthly(interval), newest_first)
            result.pages += 1
            if progress is not None:
                progress(symbol, result.fetched_bars, expected)

        if forward_from <= hi:
            for page in client.iter_klines(category, symbol, interval, forward_from, hi):
                commit(page, hi, newest_first=False)
        if backfill_to is not None:
            # Newest window first, and always up to the first stored bar (whatever ``end`` says), so
            # even an interrupted back-fill leaves one contiguous series.
            window_hi = backfill_to
            while window_hi >= lo:
                window_lo = max(lo, window_hi - 999 * step)
                page = client.klines(category, symbol, interval, window_lo, window_hi)
                if page.empty:  # before the instrument was listed
                    break
                commit(page, backfill_to, newest_first=True)
                window_hi = window_lo - step
        index = self.read(symbol, interval, category=category).index
        result.rows = len(index)
        if len(index):
            result.first, result.last = index[0], index[-1]
            result.gaps = len(self.gaps(symbol, interval, category))
        result.seconds = time.perf_counter() - began
        log.info(
            "synced %s/%s/%s: %d bars fetched, %d new", category, symbol, interval, result.fetched_bars, result.new_bars
        )
        return result

    def _sync_records(
        self,
        directory: str,
        columns: tuple[str, ...],
        lo: pd.Timestamp,
        hi: pd.Timestamp,
        fetch: Callable[[pd.Timestamp, pd.Timestamp], pd.DataFrame],
    ) -> int:
        """Timestamped records (funding, open interest) in [lo, hi), fetched only beyond what is stored."""
        bounds = self._bounds(directory)
        one_ms = pd.Timedelta(milliseconds=1)
        ranges = [(lo, hi - one_ms)] if bounds is None else [(max(lo, bounds[1] + one_ms), hi - one_ms)]
        if bounds is not None and lo < bounds[0]:
            ranges.append((lo, bounds[0] - one_ms))
        added = 0
        for range_lo, range_hi in ranges:
            if range_lo <= range_hi:
                added += self._write(
                    directory, fetch(range_lo, range_hi).loc[range_lo:range_hi], columns, monthly=False
                )
        return added

    def _remove_orphans(self, directory: str) -> None:
        """Delete temp files a killed writer left behind (never visible to readers, but they take space)."""
        if not self.fs.exists(directory):
            return
        for path in self.fs.glob(f"{directory}/.*.tmp"):
            self.fs.rm(path)
            log.info("removed temp file left by an interrupted write: %s", path)


def require_bars(store: Store, symbol: str, interval: str, category: str) -> pd.DataFrame:
    """Read a whole series, failing with a clear message when nothing is stored."""
    frame = store.read(symbol, interval, category=category)
    if frame.empty:
        raise DataError(f"no bars stored for {category}/{symbol}/{interval} in {store.root}")
    return frame
