"""The ``fmtrade demo`` job: an offline round trip through every part of the data layer.

It synthesises a market into a scratch store, serves that store through the
Bybit-compatible replay server, syncs it back with the real Bybit client into a
second store, and checks the two are identical. Later steps extend this function
into the full forecasting and backtest job, so it stays a plain library call that
returns data; the CLI only prints it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from fmtrade.config import Settings
from fmtrade.data.bybit import BybitClient
from fmtrade.data.replay import ReplayServer
from fmtrade.data.store import Progress, Store, iso
from fmtrade.data.synthetic import SyntheticSpec, synthesize
from fmtrade.errors import DataError

DEMO_SYMBOLS = ("SYNAUSDT", "SYNBUSDT", "SYNCUSDT")
INTERVAL = "60"
CATEGORY = "linear"


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


def run_demo(settings: Settings, workdir: Path, *, symbols: tuple[str, ...] = DEMO_SYMBOLS, hours: int = 4000,
             seed: int = 0, start: str = "2024-01-01", progress: Progress | None = None) -> DemoResult:
    """Synthesise -> replay over HTTP -> sync back -> compare. Raises DataError if the copy differs."""
    source, synced = Store(str(workdir / "source")), Store(str(workdir / "synced"))
    market = synthesize(list(symbols), SyntheticSpec(hours=hours, seed=seed, start=start))
    for symbol in symbols:
        source.write_bars(CATEGORY, symbol, INTERVAL, market.bars[symbol])
        source.write_funding(CATEGORY, symbol, market.funding[symbol])
    first = min(bars.index[0] for bars in market.bars.values())
    # The replay clock stands where the last synthetic bar closes, as if the market were live.
    now = max(bars.index[-1] for bars in market.bars.values()) + pd.Timedelta(hours=1)
    with ReplayServer(source, now=now) as server, BybitClient.from_settings(settings.data, server.url) as client:
        report = synced.sync(client, CATEGORY, list(symbols), INTERVAL, first, progress=progress)
        result = DemoResult(source.root, synced.root, server.url)
    for sync in report.symbols:
        original, copy = source.read(sync.symbol, INTERVAL), synced.read(sync.symbol, INTERVAL)
        funding_same = source.read_funding(sync.symbol).equals(synced.read_funding(sync.symbol))
        result.series.append(DemoSeries(
            sync.symbol, sync.rows, sync.first, sync.last, sync.gaps, sync.fetched_bars,
            len(synced.read_funding(sync.symbol)), sync.seconds, original.equals(copy) and funding_same,
        ))  # fmt: skip
    if not result.ok:
        bad = ", ".join(s.symbol for s in result.series if not s.identical)
        raise DataError(f"demo: the synced copy differs from the source for {bad}")
    return result
