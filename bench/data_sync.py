"""Bars/s synced from the replay server into a fresh store, with the client rate limiter on and off.

A synthetic market (default 3 symbols x 20 000 hourly bars, plus funding) is
written to a source store and served by ``ReplayServer`` in a separate process
(as ``fmtrade data replay`` would run it, replay clock just after the last bar),
then ``Store.sync`` pulls it through
``BybitClient`` into an empty store, once per mode, and checks the copy equals
the source. ``klines only`` rows time the client and server alone (no store
writes), to separate transport cost from the store's. The ratio shows what the limiter (default 20 req/s, Bybit allows
120/s per IP) costs on a full-history sync when the network is not the
bottleneck.

    .venv/bin/python bench/data_sync.py [--symbols 3] [--hours 20000] [--json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import tempfile
import time
from pathlib import Path

import httpx
import pandas as pd

from fmtrade.config import DataSettings
from fmtrade.data.bybit import BybitClient
from fmtrade.data.replay import ReplayServer
from fmtrade.data.store import Store
from fmtrade.data.synthetic import SyntheticSpec, synthesize


def serve(root: str, port: int, now: str) -> None:
    ReplayServer(Store(root), port=port, now=now).run()


def wait_until_up(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v5/market/time", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"replay server at {url} did not start")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_sync(url: str, source: Store, symbols: list[str], start: pd.Timestamp, limited: bool, work: Path) -> dict:
    settings = DataSettings(rate_limit_enabled=limited)
    target = Store(str(work / ("limited" if limited else "unlimited")))
    with BybitClient.from_settings(settings, base_url=url) as client:
        began = time.perf_counter()
        report = target.sync(client, "linear", symbols, "60", start)
        seconds = time.perf_counter() - began
        requests = client.requests_sent
    bars = sum(s.fetched_bars for s in report.symbols)
    for symbol in symbols:  # the copy must be exact, or the number means nothing
        pd.testing.assert_frame_equal(target.read(symbol, "60"), source.read(symbol, "60"))
    return {
        "rate_limit": f"{settings.rate_limit_per_s:g}/s" if limited else "off",
        "bars": bars,
        "requests": requests,
        "seconds": round(seconds, 3),
        "bars_per_s": round(bars / seconds, 1),
        "requests_per_s": round(requests / seconds, 1),
    }


def run_fetch(url: str, symbols: list[str], start: pd.Timestamp, end: pd.Timestamp, limited: bool) -> dict:
    """Client and server alone: ``BybitClient.klines`` of every symbol, nothing written."""
    settings = DataSettings(rate_limit_enabled=limited)
    with BybitClient.from_settings(settings, base_url=url) as client:
        began = time.perf_counter()
        bars = sum(len(client.klines("linear", symbol, "60", start, end)) for symbol in symbols)
        seconds = time.perf_counter() - began
        requests = client.requests_sent
    return {
        "rate_limit": f"{settings.rate_limit_per_s:g}/s" if limited else "off",
        "bars": bars,
        "requests": requests,
        "seconds": round(seconds, 3),
        "bars_per_s": round(bars / seconds, 1),
        "requests_per_s": round(requests / seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=3)
    parser.add_argument("--hours", type=int, default=20_000)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args()

    symbols = [f"SYN{chr(65 + i)}USDT" for i in range(args.symbols)]
    with tempfile.TemporaryDirectory(prefix="fmtrade-bench-") as tmp:
        work = Path(tmp)
        source = Store(str(work / "source"))
        market = synthesize(symbols, SyntheticSpec(hours=args.hours, seed=0))
        for symbol in symbols:
            source.write_bars("linear", symbol, "60", market.bars[symbol])
            source.write_funding("linear", symbol, market.funding[symbol])
        start = market.bars[symbols[0]].index[0]
        # Replay clock one bar after the data ends, as if syncing up to the present on a live exchange.
        now = market.bars[symbols[0]].index[-1] + pd.Timedelta(hours=1, minutes=1)

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = mp.get_context("spawn").Process(target=serve, args=(source.root, port, now.isoformat()), daemon=True)
        server.start()
        try:
            wait_until_up(url)
            # Warm the server's per-series cache so neither mode pays the first parquet read.
            with BybitClient(url, rate_limiter=None) as client:
                for symbol in symbols:
                    client.klines("linear", symbol, "60", start, start)
            runs = [run_sync(url, source, symbols, start, limited, work) for limited in (False, True)]
            end = market.bars[symbols[0]].index[-1]
            fetches = [run_fetch(url, symbols, start, end, limited) for limited in (False, True)]
        finally:
            server.terminate()
            server.join(10)

    result = {
        "symbols": len(symbols),
        "hours": args.hours,
        "sync": runs,
        "klines_only": fetches,
        "sync_off_over_on": round(runs[0]["bars_per_s"] / runs[1]["bars_per_s"], 2),
        "klines_off_over_on": round(fetches[0]["bars_per_s"] / fetches[1]["bars_per_s"], 2),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"sync of {len(symbols)} symbols x {args.hours} hourly bars (+ funding) from the replay server")
    print(f"{'what':>12} {'rate limit':>10} {'bars':>7} {'requests':>8} {'seconds':>8} {'bars/s':>9} {'req/s':>6}")
    for what, rows in (("Store.sync", runs), ("klines only", fetches)):
        for run in rows:
            print(
                f"{what:>12} {run['rate_limit']:>10} {run['bars']:>7} {run['requests']:>8} {run['seconds']:>8.2f} "
                f"{run['bars_per_s']:>9.0f} {run['requests_per_s']:>6.1f}"
            )
    print(f"limiter off / on: sync {result['sync_off_over_on']:.2f}x, klines only {result['klines_off_over_on']:.2f}x")


if __name__ == "__main__":
    main()
