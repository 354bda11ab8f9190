"""A slow ensemble member under overload: how many of its answers arrive within the time budget.

Starts Ray (embedded) and Serve with one application whose ensemble holds a fast member
(``--fast``, default the random walk) and a slow one (``--slow``, default the Lag-Llama zoo
model, autoregressive sampling on CPU) with a per-member budget of ``--timeout-s``. Each load
level (default 2 and 32 closed-loop clients) posts ``/v1/forecast`` naming both members for
``--duration`` seconds. Every answer is classified for the slow member: answered in time, shed
by the caller (``fmtrade.serve.member_calls``: it could not be answered in what was left of its budget),
timed out, or failed otherwise; the slow replica's CPU seconds per in-time answer are read
with psutil.

The ratio printed is the slow member's in-time answers/s at the highest load over the same at
the lowest (its capacity when nothing waits): near 1 when overload costs it nothing, near 0 when
the member spends its CPU on answers that arrive after their callers gave up.

    .venv/bin/python bench/serve_overload.py [--slow lagllama-fm-tiny] [--clients 2,32]
        [--timeout-s 2] [--duration 30] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import HORIZON, LEVELS, bench_home, closed_loop, contexts, server_cpu_s  # noqa: E402  (bench/ is not a package)

APP = "overload"


def outcome(doc: dict[str, Any], slow: str) -> str:
    """What became of the slow member in one answer."""
    if slow in doc["models"]:
        return "answered"
    reason = doc["failed"].get(slow, "")
    for kind in ("shed", "timed out"):
        if reason.startswith(kind):
            return kind
    return "failed"


async def drive(url: str, clients: int, duration: float, bodies: list[bytes], slow: str) -> dict[str, Any]:
    """``clients`` closed-loop clients for ``duration`` seconds; the slow member's fate per answer."""
    import aiohttp

    headers = {"content-type": "application/json"}
    latencies: list[float] = []
    fates: Counter[str] = Counter()
    stop = time.perf_counter() + duration

    async def client(i: int, http: aiohttp.ClientSession) -> None:
        k = i
        while time.perf_counter() < stop:
            began = time.perf_counter()
            async with http.post(url, data=bodies[k % len(bodies)], headers=headers) as response:
                k += clients
                if response.status != 200:
                    fates[f"HTTP {response.status}"] += 1
                    await response.read()
                    continue
                doc = await response.json()
            latencies.append(time.perf_counter() - began)
            fates[outcome(doc, slow)] += 1

    elapsed = await closed_loop(clients, client)
    ms = np.array(latencies) * 1000.0
    return {
        "clients": clients,
        "seconds": elapsed,
        "requests": len(latencies),
        "rps": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(ms, 50)) if ms.size else None,
        "p99_ms": float(np.percentile(ms, 99)) if ms.size else None,
        "slow": dict(fates),
        "slow_in_time_per_s": fates["answered"] / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow", default="lagllama-fm-tiny")
    parser.add_argument("--fast", default="random-walk")
    parser.add_argument("--clients", default="2,32")
    parser.add_argument("--timeout-s", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--num-cpus", type=float, default=1.0, help="CPU share of the slow member's replica")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]

    import ray
    from ray import serve

    from fmtrade.jobs.ray_runtime import start_local_ray
    from fmtrade.serve.app import build_app

    home, _, _ = bench_home(args.slow, "tiny")
    bodies = [
        json.dumps({"context": c, "horizon": HORIZON, "quantiles": LEVELS, "models": [args.fast, args.slow]}).encode()
        for c in contexts(256, args.context)
    ]
    small = {"num_cpus": 0.1, "max_ongoing_requests": 512}
    app_args = {
        "settings": {"home": str(home)},
        "models": [args.fast, args.slow],
        "model_defaults": {"num_cpus": 0.1},
        "model_options": {args.slow: {"num_cpus": args.num_cpus}},
        "ensemble": {**small, "timeout_s": args.timeout_s},
        "ingress": small,
        "limits": {"default_context_length": args.context},
    }
    port = 8000 + os.getpid() % 1000
    url = f"http://127.0.0.1:{port}/{APP}/v1/forecast"
    start_local_ray()
    runs: list[dict[str, Any]] = []
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(app_args), name=APP, route_prefix=f"/{APP}", blocking=False)
        asyncio.run(drive(url, 2, 5.0, bodies, args.slow))  # warm-up: lazy init in every hop
        for clients in levels:
            before = server_cpu_s(APP)
            run = asyncio.run(drive(url, clients, args.duration, bodies, args.slow))
            after = server_cpu_s(APP)
            role = f"model-{args.slow}"
            slow_cpu = after.get(role, 0.0) - before.get(role, 0.0)
            answered = run["slow"].get("answered", 0)
            run["slow_cpu_s_per_in_time_answer"] = slow_cpu / answered if answered else None
            runs.append(run)
            print(f"clients={clients:>3} rps={run['rps']:6.1f} p50={run['p50_ms']:.0f}ms p99={run['p99_ms']:.0f}ms "
                  f"slow member: {run['slow']}", file=sys.stderr)  # fmt: skip
    finally:
        ray.shutdown()  # the embedded Ray, Serve with it (see serve.runner.serve_forever)

    light, heavy = runs[0], runs[-1]
    ratio = heavy["slow_in_time_per_s"] / light["slow_in_time_per_s"] if light["slow_in_time_per_s"] else None
    result = {"fast": args.fast, "slow": args.slow, "timeout_s": args.timeout_s, "context": args.context,
              "horizon": HORIZON, "duration_s": args.duration, "runs": runs,
              "in_time_ratio_heavy_over_light": ratio}  # fmt: skip
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"\nensemble {args.fast} + {args.slow} (tiny zoo), budget {args.timeout_s:g}s, context {args.context}, "
          f"horizon {HORIZON}, {args.duration:g}s per load level")  # fmt: skip
    print("| clients | req/s | p50 / p99 ms | slow member in time | shed | timed out | other | in time/s "
          "| slow CPU s per in-time answer |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for run in runs:
        fates = run["slow"]
        other = sum(n for k, n in fates.items() if k not in ("answered", "shed", "timed out"))
        cpu = run["slow_cpu_s_per_in_time_answer"]
        print(f"| {run['clients']} | {run['rps']:.1f} | {run['p50_ms']:.0f} / {run['p99_ms']:.0f} "
              f"| {fates.get('answered', 0)} of {sum(fates.values())} | {fates.get('shed', 0)} "
              f"| {fates.get('timed out', 0)} | {other} | {run['slow_in_time_per_s']:.2f} "
              f"| {'-' if cpu is None else f'{cpu:.2f}'} |")  # fmt: skip
    if ratio is not None:
        print(f"slow member in-time answers/s at {heavy['clients']} clients / at {light['clients']}: {ratio:.2f}")


if __name__ == "__main__":
    main()
