"""The ``fmtrade demo`` job's data step: an offline round trip through every part of the data layer.

It puts a market into a scratch store (the real-market sample shipped in the package, or a
seeded synthetic market), serves that store through the Bybit-compatible replay server, syncs
it back with the real Bybit client into a second store, and checks the two are identical. It is
a plain library call that returns data; the CLI runs the later steps and prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from fmtrade.config import Settings
from fmtrade.data.bybit import BybitClient
from fmtrade.data.replay import ReplayServer
from fmtrade.data.sample import SAMPLE_CATEGORY, SAMPLE_INTERVAL, import_sample, sample_symbols
from fmtrade.data.store import Progress, Store, iso
from fmtrade.data.synthetic import SyntheticSpec, synthesize
from fmtrade.errors import DataError

SYNTHETIC_SYMBOLS = ("SYNAUSDT", "SYNBUSDT", "SYNCUSDT")
SYNTHETIC_CATEGORY = "linear"  # perpetuals: the synthetic market has funding too
INTERVAL = SAMPLE_INTERVAL


@dataclass(frozen=True)
class DemoMarket:
    """Which market the demo runs on: the shipped real sample, or a synthetic one (``synthetic``)."""

    synthetic: bool = False
    symbols: tuple[str, ...] = ()
    hours: int = 4000
    seed: int = 0
    start: str = "2024-01-01"

    @property
    def category(self) -> str:
        return SYNTHETIC_CATEGORY if self.synthetic else SAMPLE_CATEGORY

    def chosen(self) -> tuple[str, ...]:
        return self.symbols or (SYNTHETIC_SYMBOLS if self.synthetic else tuple(sample_symbols()))

    def write(self, store: Store) -> None:
        """Put the market's bars (and the synthetic market's funding) into ``store``."""
        if not self.synthetic:
            import_sample(store, list(self.chosen()))
            return
        market = synthesize(list(self.chosen()), SyntheticSpec(hours=self.hours, seed=self.seed, start=self.start))
        for symbol in self.chosen():
            store.write_bars(self.category, symbol, INTERVAL, market.bars[symbol])
            store.write_funding(self.category, symbol, market.funding[symbol])


@dataclass
class DemoSeries:
    symbol: str
    rows: int
    first: pd.Timestamp
    last: pd.Timestamp
    gaps: int
    synced_bars: int
    funding_rows: int
    seconds: float
    identical: bool

    @property
    def bars_per_s(self) -> float:
        return self.synced_bars / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol, "rows": self.rows, "first": iso(self.first), "last": iso(self.last),
            "gaps": self.gaps, "synced_bars": self.synced_bars, "funding_rows": self.funding_rows,
            "seconds": round(self.seconds, 3), "bars_per_s": round(self.bars_per_s, 1), "identical": self.identical,
        }  # fmt: skip


@dataclass
class DemoResult:
    source_store: str
    synced_store: str
    replay_url: str
    series: list[DemoSeries] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.series) and all(s.identical for s in self.series)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "source_store": self.source_store, "synced_store": self.synced_store,
            "replay_url": self.replay_url, "series": [s.to_dict() for s in self.series],
        }  # fmt: skip


def run_demo(settings: Settings, workdir: Path, market: DemoMarket, progress: Progress | None = None) -> DemoResult:
    """Market -> replay over HTTP -> sync back -> compare. Raises DataError if the copy differs."""
    source, synced = Store(str(workdir / "source")), Store(str(workdir / "synced"))
    market.write(source)
    symbols, category = list(market.chosen()), market.category
    stored = {symbol: source.read(symbol, INTERVAL, category=category) for symbol in symbols}
    first = min(bars.index[0] for bars in stored.values())
    # The replay clock stands where the last bar closes, as if the market were live.
    now = max(bars.index[-1] for bars in stored.values()) + pd.Timedelta(hours=1)
    with ReplayServer(source, now=now) as server, BybitClient.from_settings(settings.data, server.url) as client:
        report = synced.sync(client, category, symbols, INTERVAL, first, progress=progress)
        result = DemoResult(source.root, synced.root, server.url)
    for sync in report.symbols:
        copy = synced.read(sync.symbol, INTERVAL, category=category)
        same, funding_rows = _same_bars(stored[sync.symbol], copy), 0
        if market.synthetic:  # spot has no funding
            copied = synced.read_funding(sync.symbol, category=category)
            same = same and source.read_funding(sync.symbol, category=category).equals(copied)
            funding_rows = len(copied)
        result.series.append(DemoSeries(
            sync.symbol, sync.rows, sync.first, sync.last, sync.gaps, sync.fetched_bars, funding_rows, sync.seconds,
            same,
        ))  # fmt: skip
    if not result.ok:
        bad = ", ".join(s.symbol for s in result.series if not s.identical)
        raise DataError(f"demo: the synced copy differs from the source for {bad}")
    return result


def _same_bars(source: pd.DataFrame, copy: pd.DataFrame) -> bool:
    """Bars equal to the last digit; turnover only where the source knows it (the sample's Binance
    dumps have none, and the replay server, like Bybit, always sends one: an estimate)."""
    known = source["turnover"].notna()
    ohlcv = ["open", "high", "low", "close", "volume"]
    return source[ohlcv].equals(copy[ohlcv]) and source.loc[known, "turnover"].equals(copy.loc[known, "turnover"])
