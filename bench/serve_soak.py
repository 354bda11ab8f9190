"""Soak test of the served HTTP API: many clients for a long, bounded time, nothing may degrade.

Starts Ray (embedded) and Serve with one application serving ``--model`` (HTTP answered as
``fmtrade serve up`` answers it, see bench/serve_load.py), warms it up, then drives it with
``--clients`` closed-loop clients (aiohttp, one keep-alive connection each) posting
``/v1/forecast`` with an explicit context for ``--minutes`` (``--seconds`` for a smoke run).
Reported per window of ``--window-s`` (default one minute): requests, throughput, p50/p99
latency and errors; over the run: every error by kind (HTTP status or exception), and each
Serve replica's resident memory (psutil, on the replica PIDs from Ray's actor table) after the
warm-up and at the end. Each window also says how much of the machine's CPU other processes than
the service and the load generator took, so a slowdown caused by a neighbour is told apart from
one of the service.

Targets (``ok`` in the JSON): zero errors, flat latency (the last window's p50 within 25% of the
first's) and no replica growing its resident memory by 5% or more. The memory baseline is taken
after a warm-up at the full client count (``--warmup-s``, 60 s): the batches, buffers and
connections of the soak's own load are allocated by then, so only growth under a steady load counts
(a warm-up of 8 clients for 5 s left a first-minute step of 4-5% that then stayed flat). Each
window reports every replica's resident memory, so settling and a leak can be told apart.

    .venv/bin/python bench/serve_soak.py [--model chronos-bolt-fm-tiny] [--clients 64]
        [--minutes 10 | --seconds 20] [--window-s 60] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from fmtrade.jobs.ray_runtime import alive_actors

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import (  # noqa: E402  (bench/ is not a package)
    Load,
    bench_home,
    build_load,
    busy_cpu_s,
    closed_loop,
    contexts,
    drive,
    server_cpu_s,
)

APP = "soak"
FLAT_P50 = 1.25  # last window's p50 over the first's, at most
MAX_GROWTH_PCT = 5.0


def replica_rss(app: str) -> dict[str, int]:
    """Resident bytes of each alive Serve replica of ``app``, keyed ``deployment#actor-id-prefix``.
    PIDs come from the actor table of the Ray this driver is connected to (other Rays may run here)."""
    import psutil

    out = {}
    for actor_id, info in alive_actors(f"ServeReplica:{app}:").items():
        name = info["ActorClassName"]  # ServeReplica:APP:DEPLOYMENT
        try:
            out[f"{name.rsplit(':', 1)[1]}#{actor_id[:8]}"] = psutil.Process(info["Pid"]).memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return out


Snapshot = tuple[float, float, dict[str, int]]


def snapshot(app: str) -> Snapshot:
    """(busy CPU seconds of the whole machine, CPU seconds of ``app``'s Serve processes and this
    load generator) so far, whose difference is what other processes took from the run, and each
    replica's resident bytes now (growth that flattens is settling; growth that goes on is a leak)."""
    import psutil

    me = psutil.Process().cpu_times()
    return busy_cpu_s(), sum(server_cpu_s(app).values()) + me.user + me.system, replica_rss(app)


async def soak(
    url: str, clients: int, seconds: float, load: Load, app: str, window_s: float
) -> tuple[list[tuple[float, float]], Counter[str], list[Snapshot]]:
    """``clients`` closed-loop clients for ``seconds``: (finish time since start, latency s) of each
    answered request, every failed one counted by kind (a failure never stops its client), and a
    :func:`snapshot` at the start and after each window."""
    import aiohttp

    headers = {"content-type": "application/json"}
    done: list[tuple[float, float]] = []
    errors: Counter[str] = Counter()
    samples = [snapshot(app)]
    start = time.perf_counter()
    stop = start + seconds

    async def client(i: int, http: aiohttp.ClientSession) -> None:
        k = i
        while time.perf_counter() < stop:
            body = load.bodies[k % len(load.bodies)]
            k += clients
            began = time.perf_counter()
            try:
                async with http.post(f"{url}{load.route}", data=body, headers=headers) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                errors[type(exc).__name__] += 1
                continue
            if status != 200:
                errors[f"HTTP {status}"] += 1
                continue
            now = time.perf_counter()
            done.append((now - start, now - began))

    async def sampler() -> None:
        for w in range(1, max(1, int(np.ceil(seconds / window_s))) + 1):
            await asyncio.sleep(max(0.0, start + min(w * window_s, seconds) - time.perf_counter()))
            samples.append(snapshot(app))

    await asyncio.gather(closed_loop(clients, client), sampler())
    return done, errors, samples


def windows(
    done: list[tuple[float, float]], seconds: float, window_s: float, samples: list[Snapshot]
) -> list[dict[str, Any]]:
    """Requests, throughput, p50/p99 latency (ms) of each ``window_s`` slice of the run, the share of
    the machine's CPU that other processes than the service and the load generator took in it, and
    each replica's resident memory at its end."""
    import psutil

    cores = psutil.cpu_count() or 1
    count = max(1, int(np.ceil(seconds / window_s)))
    rows = []
    for w in range(count):
        last = w == count - 1
        ms = np.array([lat for t, lat in done if w * window_s <= t < (w + 1) * window_s or (last and t >= seconds)])
        ms *= 1000.0
        span = min(window_s, seconds - w * window_s)
        others, rss = None, {}
        if w + 1 < len(samples):
            (busy0, ours0, _), (busy1, ours1, at_end) = samples[w], samples[w + 1]
            others = round(100.0 * max(0.0, (busy1 - busy0) - (ours1 - ours0)) / (span * cores), 1)
            rss = {name: round(size / 2**20, 1) for name, size in at_end.items()}
        rows.append({
            "window": w, "start_s": round(w * window_s, 1), "requests": int(ms.size),
            "rps": round(ms.size / span, 2) if span > 0 else 0.0,
            "p50_ms": round(float(np.percentile(ms, 50)), 1) if ms.size else None,
            "p99_ms": round(float(np.percentile(ms, 99)), 1) if ms.size else None,
            "other_processes_cpu_pct": others, "rss_mb": rss,
        })  # fmt: skip
    return rows


def summarise(
    done: list[tuple[float, float]], errors: Counter[str], seconds: float, window_s: float,
    before: dict[str, int], after: dict[str, int], samples: list[Snapshot],
) -> dict[str, Any]:  # fmt: skip
    """The run's figures and whether each target was met."""
    rows = windows(done, seconds, window_s, samples)
    ms = np.array([lat for _, lat in done]) * 1000.0
    memory = {
        name: {"start_mb": round(rss / 2**20, 1), "end_mb": round(after[name] / 2**20, 1) if name in after else None,
               "growth_pct": round(100.0 * (after[name] - rss) / rss, 2) if name in after else None}
        for name, rss in before.items()
    }  # fmt: skip
    growth = [m["growth_pct"] for m in memory.values() if m["growth_pct"] is not None]
    p50s = [r["p50_ms"] for r in rows if r["p50_ms"] is not None]
    drift = p50s[-1] / p50s[0] if len(p50s) >= 2 and p50s[0] else 1.0
    replaced = sorted(set(before) ^ set(after))  # a replica that died or was replaced during the run
    targets = {
        "zero_errors": not errors,
        "flat_latency": drift <= FLAT_P50,
        "memory_growth_under_5pct": bool(growth) and max(growth) < MAX_GROWTH_PCT and not replaced,
    }
    return {
        "seconds": seconds, "requests": len(done), "errors": sum(errors.values()), "errors_by_kind": dict(errors),
        "rps": round(len(done) / seconds, 2),
        "p50_ms": round(float(np.percentile(ms, 50)), 1) if ms.size else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 1) if ms.size else None,
        "p50_last_over_first": round(drift, 3), "windows": rows, "replica_memory": memory,
        "replicas_replaced": replaced, "max_memory_growth_pct": max(growth) if growth else None,
        "targets": targets, "ok": all(targets.values()),
    }  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="chronos-bolt-fm-tiny")
    parser.add_argument("--size", default="tiny", choices=["tiny", "small"], help="zoo checkpoint size")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=None, help="run length in seconds (overrides --minutes)")
    parser.add_argument(
        "--window-s", type=float, default=None, help="report window (default 60 s, or 1/4 of a short run)"
    )
    parser.add_argument("--warmup-s", type=float, default=60.0, help="warm-up at the full client count")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--num-cpus", type=float, default=0.5, help="CPU share of the model replica")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    seconds = args.seconds if args.seconds is not None else args.minutes * 60.0
    window_s = args.window_s or (60.0 if seconds >= 240 else max(1.0, seconds / 4))

    import ray
    from ray import serve

    from fmtrade.jobs.ray_runtime import start_local_ray
    from fmtrade.serve.app import build_app

    home, _, _ = bench_home(args.model, args.size)
    load = build_load(contexts(256, args.context), 1, args.model)
    small = {"num_cpus": 0.1, "max_ongoing_requests": 4 * args.clients}
    app_args = {
        "settings": {"home": str(home)},
        "models": [args.model],
        "model_defaults": {"num_cpus": args.num_cpus, "max_batch_size": args.max_batch,
                           "batch_wait_timeout_s": 0.005, "max_ongoing_requests": max(2 * args.max_batch, 8)},
        "ensemble": small,
        "ingress": small,
        "limits": {"default_context_length": args.context},
    }  # fmt: skip
    port = free_port()
    url = f"http://127.0.0.1:{port}/{APP}"
    start_local_ray()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(app_args), name=APP, route_prefix=f"/{APP}", blocking=False)
        asyncio.run(drive(url, args.clients, args.warmup_s, load))  # the soak's own load: its allocations settle
        before = replica_rss(APP)
        print(f"soaking {url} with {args.clients} clients for {seconds:g}s ({len(before)} replicas)", file=sys.stderr)
        done, errors, samples = asyncio.run(soak(url, args.clients, seconds, load, APP, window_s))
        after = replica_rss(APP)
    finally:
        ray.shutdown()  # the embedded Ray, Serve with it
    result = {"model": args.model, "clients": args.clients, "context": args.context, "window_s": window_s,
              **summarise(done, errors, seconds, window_s, before, after, samples)}  # fmt: skip
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"\n{args.model}, {args.clients} clients, {seconds:g}s: {result['requests']} requests, "
          f"{result['rps']} req/s, p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
          f"errors {result['errors']} {result['errors_by_kind'] or ''}")  # fmt: skip
    print("| window | start s | requests | req/s | p50 ms | p99 ms | other processes' CPU % |")
    print("|---|---|---|---|---|---|---|")
    for row in result["windows"]:
        print(f"| {row['window']} | {row['start_s']} | {row['requests']} | {row['rps']} | {row['p50_ms']} "
              f"| {row['p99_ms']} | {row['other_processes_cpu_pct']} |")  # fmt: skip
    print("| replica | RSS start MB | RSS end MB | growth % |\n|---|---|---|---|")
    for name, mem in result["replica_memory"].items():
        print(f"| {name} | {mem['start_mb']} | {mem['end_mb']} | {mem['growth_pct']} |")
    print(f"targets: {result['targets']} -> {'OK' if result['ok'] else 'MISSED'}")


if __name__ == "__main__":
    main()
