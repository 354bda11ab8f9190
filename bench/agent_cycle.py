"""One agent cycle's latency for 1, 10 and 50 symbols: forecasts in-process vs through the served API.

A cycle is what ``fmtrade agent run --once`` times per tick (:meth:`fmtrade.agent.loop.Agent.run_cycle`):
per symbol, the book, bars, funding and open interest from the replay server over HTTP (the
Bybit client, its rate limiter off: the server is local), indicators, the ensemble forecast, the
rules decision, risk, a paper fill and the SQLite journal. Symbols are synthesised into a temporary
store (linear, hourly) and served by the replay server. Forecasts either run in this process
(``InProcessForecasts``, the models loaded once) or go to the served app (``ApiForecasts``, the
ingress started on an embedded Ray with Serve as ``serve/demo.py`` starts it), one request per
symbol, as ``agent run --serve-url`` sends them. Every agent gets one warm-up cycle (model loads,
first connections) before ``--repeats`` timed cycles; the median is reported, and the ratio of the
two paths is measured in the same run.

    .venv/bin/python bench/agent_cycle.py [--symbols 1,10,50] [--models random-walk,theta]
        [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from fmtrade.agent.journal import Journal
from fmtrade.agent.loop import Agent, LiveSource
from fmtrade.agent.observe import ApiForecasts, Forecasts, InProcessForecasts
from fmtrade.agent.paper import PaperBroker
from fmtrade.agent.reasoners import RulesReasoner
from fmtrade.config import Settings, load_settings
from fmtrade.data.bybit import BybitClient
from fmtrade.data.replay import ReplayServer
from fmtrade.data.store import Store
from fmtrade.data.synthetic import SyntheticSpec, synthesize

HOURS = 1200  # 50 days of hourly bars: the 512-bar context and the indicators' history fit


def synthetic_store(root: Path, count: int) -> tuple[str, list[str]]:
    symbols = [f"SYN{i:02d}USDT" for i in range(count)]
    market = synthesize(symbols, SyntheticSpec(hours=HOURS, seed=3, start="2024-01-01"))
    store = Store(str(root))
    for symbol in symbols:
        store.write_bars("linear", symbol, "60", market.bars[symbol])
        store.write_funding("linear", symbol, market.funding[symbol])
    return str(root), symbols


@contextlib.contextmanager
def served_api(settings: Settings, store: str, models: Sequence[str]) -> Iterator[str]:
    """The served app (ingress, ensemble, one deployment per model) on an embedded Ray, as serve/demo.py."""
    import ray
    from ray import serve as ray_serve

    from fmtrade.jobs.ray_runtime import start_local_ray
    from fmtrade.serve.app import build_app
    from fmtrade.serve.runner import deploy

    args = {
        "settings": {"home": str(settings.home), "data": {"store": store}, "models": settings.models.model_dump()},
        "models": list(models),
        "model_defaults": {"num_cpus": 0.1},
        "ensemble": {"num_cpus": 0.1},
        "ingress": {"num_cpus": 0.1},
    }
    start_local_ray()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    try:
        ray_serve.start(http_options={"host": "127.0.0.1", "port": port})
        url = f"http://127.0.0.1:{port}"
        deploy([("fmtrade-agent-bench", "/", build_app(args))], url, 600.0)
        yield url
    finally:
        ray.shutdown()


def time_cycles(
    settings: Settings, client: BybitClient, symbols: Sequence[str], forecasts: Forecasts, repeats: int, home: Path
) -> list[float]:
    """Seconds per timed cycle of one agent over ``symbols`` (after one warm-up cycle)."""
    with Journal(home / f"journal-{time.monotonic_ns()}.sqlite") as journal:
        agent = Agent(
            settings, PaperBroker.from_settings(settings), RulesReasoner(), journal,
            LiveSource(client, "linear", "60"), symbols=symbols, forecasts=forecasts,
        )  # fmt: skip
        seconds = []
        for k in range(repeats + 1):
            start = time.perf_counter()
            result = agent.run_cycle()
            if k:
                seconds.append(time.perf_counter() - start)
            if result.errors:
                raise RuntimeError(f"cycle errors: {result.errors[:3]}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", default="1,10,50", help="symbol counts per cycle")
    parser.add_argument("--models", default="random-walk,theta", help="ensemble members (registry names)")
    parser.add_argument("--repeats", type=int, default=3, help="timed cycles per configuration")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.symbols.split(",")]
    models = args.models.split(",")
    home = Path(tempfile.mkdtemp(prefix="fmtrade-agent-bench-"))
    settings = load_settings().model_copy(update={"home": home})
    settings = settings.model_copy(update={"data": settings.data.model_copy(update={"rate_limit_enabled": False})})
    store, symbols = synthetic_store(home / "store", max(counts))
    rows: list[dict[str, Any]] = []
    replay = ReplayServer(store, now="2024-02-15T00:00:00Z")
    with replay, BybitClient.from_settings(settings.data, replay.url) as client:

        def measure(path: str, forecasts: Forecasts) -> None:
            for n in counts:
                seconds = time_cycles(settings, client, symbols[:n], forecasts, args.repeats, home)
                rows.append({"symbols": n, "path": path, "s": seconds})

        measure("in-process", InProcessForecasts(settings, models=models))
        with served_api(settings, store, models) as url:
            measure("served", ApiForecasts(url, models=models))
    for row in rows:
        row["median_s"] = statistics.median(row["s"])
        row["ms_per_symbol"] = 1000 * row["median_s"] / row["symbols"]
    by = {(r["path"], r["symbols"]): r["median_s"] for r in rows}
    table = [
        {"symbols": n, "in_process_s": by["in-process", n], "served_s": by["served", n],
         "served_over_in_process": by["served", n] / by["in-process", n]}
        for n in counts
    ]  # fmt: skip
    if args.json:
        json.dump({"models": models, "repeats": args.repeats, "rows": rows, "table": table}, sys.stdout, indent=2)
        print()
        return 0
    print(f"one agent cycle (rules, paper, replay server), models {','.join(models)}, median of {args.repeats}")
    print(f"{'symbols':>8} {'in-process s':>13} {'ms/symbol':>10} {'served s':>9} {'ms/symbol':>10} {'served/in':>10}")
    for t in table:
        n = t["symbols"]
        print(
            f"{n:>8} {t['in_process_s']:>13.3f} {1000 * t['in_process_s'] / n:>10.1f} {t['served_s']:>9.3f} "
            f"{1000 * t['served_s'] / n:>10.1f} {t['served_over_in_process']:>10.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
