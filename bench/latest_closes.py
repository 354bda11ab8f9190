"""The symbol-request read path: a fresh store read of a symbol's latest window vs the ingress's
cached window (``fmtrade.data.closes.LatestCloses``), CPU per call measured in one run.

    .venv/bin/python bench/latest_closes.py [--length 512] [--calls 200]

The store holds two years of synthetic hourly bars for one symbol, written by fmtrade's own
store (yearly parquet files, like a synced symbol).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable

from fmtrade.data.closes import LatestCloses
from fmtrade.data.store import Store
from fmtrade.data.synthetic import SyntheticSpec, synthesize

SYMBOL, INTERVAL, CATEGORY = "SYNAUSDT", "60", "linear"


def cpu_ms(call: Callable[[], object], calls: int) -> float:
    call()
    began = time.process_time()
    for _ in range(calls):
        call()
    return (time.process_time() - began) / calls * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    store = Store(tempfile.mkdtemp(prefix="fmtrade-latest-bench-"))
    bars = synthesize([SYMBOL], SyntheticSpec(hours=2 * 365 * 24, seed=1)).bars[SYMBOL]
    store.write_bars(CATEGORY, SYMBOL, INTERVAL, bars)

    def fresh() -> object:  # what every symbol request cost before: a new cache each call
        return LatestCloses(store).get(SYMBOL, INTERVAL, CATEGORY, args.length)

    cache = LatestCloses(store)
    read = cpu_ms(fresh, args.calls)
    cached = cpu_ms(lambda: cache.get(SYMBOL, INTERVAL, CATEGORY, args.length), args.calls * 10)
    print(f"window of {args.length} closes, {len(bars)} stored bars")
    print(f"fresh read       {read:8.3f} ms CPU per call")
    print(f"cached (listing) {cached:8.3f} ms CPU per call")
    print(f"ratio            {read / cached:8.1f}x")


if __name__ == "__main__":
    main()
