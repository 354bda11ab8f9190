"""Load test of the served HTTP API: throughput and latency, batching on vs off, Serve vs direct.

Starts Ray (embedded) and Serve with two applications serving the same single model:
``/on`` batches up to ``--max-batch`` series per model call, ``/off`` has
``max_batch_size: 1``. For each number of concurrent clients (default 1, 16, 64)
each application is driven for ``--duration`` seconds by that many closed-loop
clients (asyncio, one keep-alive connection each) posting ``/v1/forecast`` with an
explicit context; requests/s and p50/p95/p99 latency are printed, with the on/off ratio.

The load generator uses aiohttp rather than httpx (the library fmtrade's own client
uses): it shares the machine with the service, and per request it burns ~0.7 ms of
CPU where httpx burns ~2.5 ms (measured here), CPU the replicas would otherwise get.

Serve vs direct: the mean batch size the model actually formed under load (reported
by the service per request as ``models[NAME].batch_size``) is matched to the nearest
measured batch size, at which the same model is called in this process (with the
replica's thread count) before and after serving; served throughput / direct
throughput at the same batch size is the efficiency of the serving path. The
single-client latency minus the direct batch-1 call time is Serve's per-request
overhead (proxy, ingress, model replica hops and JSON).

CPU accounting: CPU seconds per request of each Serve process (psutil; contention
does not inflate CPU time the way it inflates wall time), of the load generator,
and of the whole machine. When the machine is saturated, throughput is at most
cores / machine CPU per request: the printed ceiling tells which work bounds it.

``--series N`` sends N explicit contexts per request through ``/v1/forecast/batch``: the
serving path's per-request cost is then shared by N forecasts, and served/direct compares
forecasts/s at the batch the model formed.

HTTP is answered as ``fmtrade serve up`` answers it: by HAProxy (``fmtrade.jobs.ray_runtime.FAST_PATH_ENV``).
``--python-proxy`` puts Ray's Python proxy there instead; ``--direct-ingress`` has the clients
call the ingress replica's own HTTP port (Ray Serve's direct ingress), skipping any proxy.

    .venv/bin/python bench/serve_load.py [--model chronos-bolt-fm-tiny] [--clients 1,16,64]
        [--size tiny|small|published-small|base] [--duration 10] [--max-batch 64] [--series 1]
        [--python-proxy | --direct-ingress] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fmtrade.config import Settings, load_settings
from fmtrade.data.store import Store
from fmtrade.data.synthetic import SyntheticSpec, synthesize
from fmtrade.jobs.ray_runtime import HAPROXY_SWITCH
from fmtrade.models.registry import ModelSpec, active_specs, build_forecaster, is_available, select_specs
from fmtrade.models.zoo import SIZES, build_zoo

HORIZON = 24
LEVELS = [0.1, 0.5, 0.9]


def contexts(count: int, length: int) -> list[list[float]]:
    closes = synthesize(["SYN"], SyntheticSpec(hours=20_000, seed=0)).bars["SYN"]["close"].to_numpy(float)
    starts = np.linspace(0, closes.size - length, count).astype(int)
    return [closes[s : s + length].tolist() for s in starts]


@dataclass(frozen=True)
class Load:
    """What the clients post: ``series`` contexts per request to ``route``, cycling through ``bodies``."""

    model: str
    series: int
    route: str
    bodies: list[bytes]


def symbol_load(symbols: list[str], model: str) -> Load:
    """One stored symbol per request (the ingress reads its latest window from the store)."""
    options = {"horizon": HORIZON, "quantiles": LEVELS, "models": [model]}
    return Load(model, 1, "/v1/forecast", [json.dumps({"symbol": s, **options}).encode() for s in symbols])


def build_load(pool: list[list[float]], series: int, model: str) -> Load:
    """One explicit context per request, or ``series`` of them in one batch request. The JSON is
    encoded once, up front: the load generator shares the two cores with the service, and encoding
    512 floats costs it ~0.4 ms per series, CPU the service would otherwise get."""
    options = {"horizon": HORIZON, "quantiles": LEVELS, "models": [model]}
    if series == 1:
        return Load(model, 1, "/v1/forecast", [json.dumps({"context": row, **options}).encode() for row in pool])
    count = -(-len(pool) // series)  # every context once
    batches = [[{"context": pool[(k * series + j) % len(pool)]} for j in range(series)] for k in range(count)]
    bodies = [json.dumps({"series": rows, **options}).encode() for rows in batches]
    return Load(model, series, "/v1/forecast/batch", bodies)


async def closed_loop(clients: int, client: Callable[[int, Any], Awaitable[None]]) -> float:
    """Run ``client(i, session)`` for ``i`` in ``range(clients)`` concurrently, on one aiohttp session
    with a keep-alive connection per client; the seconds they took."""
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients), timeout=timeout) as http:
        began = time.perf_counter()
        await asyncio.gather(*(client(i, http) for i in range(clients)))
        return time.perf_counter() - began


async def drive(url: str, clients: int, duration: float, load: Load) -> dict[str, Any]:
    """``clients`` concurrent closed-loop clients for ``duration`` seconds."""
    import aiohttp

    headers = {"content-type": "application/json"}
    latencies: list[float] = []
    batch_sizes: list[int] = []
    errors = 0
    stop = time.perf_counter() + duration

    async def client(i: int, http: aiohttp.ClientSession) -> None:
        nonlocal errors
        k = i
        while time.perf_counter() < stop:
            body = load.bodies[k % len(load.bodies)]
            k += clients
            began = time.perf_counter()
            async with http.post(f"{url}{load.route}", data=body, headers=headers) as response:
                if response.status != 200:
                    errors += 1
                    await response.read()
                    continue
                doc = await response.json()
            latencies.append(time.perf_counter() - began)
            first = doc["results"][0] if load.series > 1 else doc
            batch_sizes.append(first["models"][load.model]["batch_size"])

    elapsed = await closed_loop(clients, client)
    ms = np.array(latencies) * 1000.0
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": errors,
        "rps": len(latencies) / elapsed,
        "forecasts_per_s": len(latencies) * load.series / elapsed,
        "p50_ms": float(np.percentile(ms, 50)) if ms.size else None,
        "p95_ms": float(np.percentile(ms, 95)) if ms.size else None,
        "p99_ms": float(np.percentile(ms, 99)) if ms.size else None,
        "mean_batch": statistics.fmean(batch_sizes) if batch_sizes else 0.0,
    }


def bench_home(model: str, size: str) -> tuple[Path, Settings, ModelSpec]:
    """A throwaway FMTRADE_HOME (exported for the replicas) holding ``model``'s zoo checkpoint."""
    home = Path(tempfile.mkdtemp(prefix="fmtrade-serve-bench-"))
    os.environ["FMTRADE_HOME"] = str(home)
    settings = load_settings(None, {"home": str(home)})
    spec = select_specs(active_specs(settings), [model])[0]
    if not is_available(spec, settings):
        build_zoo(settings, only=[model], size=size)
    return home, settings, spec


def direct_rate(model: Any, pool: list[list[float]], batch: int, seconds: float) -> float:
    """Forecasts/s calling the adapter in this process at ``batch`` rows per call."""
    rows = [np.asarray(pool[i % len(pool)]) for i in range(batch)]
    model.forecast(rows, HORIZON, LEVELS)
    calls, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        model.forecast(rows, HORIZON, LEVELS)
        calls += 1
    return calls * batch / (time.perf_counter() - began)


def server_cpu_s(app: str) -> dict[str, float]:
    """CPU seconds so far of the Serve proxy and of ``app``'s replicas, by role."""
    import psutil

    out: dict[str, float] = {}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
            marker = f"ServeReplica:{app}:"
            if "ProxyActor" in cmd:
                role = "proxy"
            elif marker in cmd:  # title: ray::ServeReplica:APP:DEPLOYMENT[.METHOD while a call runs]
                role = cmd.split(marker, 1)[1].split()[0].split(".")[0]
            else:
                continue
            times = proc.cpu_times()
            out[role] = out.get(role, 0.0) + times.user + times.system
        except (psutil.NoSuchProcess, psutil.AccessDenied, IndexError):
            continue
    return out


def busy_cpu_s() -> float:
    """Non-idle CPU seconds of the whole machine so far."""
    import psutil

    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def served(url: str, app: str, clients: int, duration: float, load: Load) -> dict[str, Any]:
    """One load run plus the CPU it cost per request: by Serve process role, the load generator,
    and the whole machine (which also counts Ray's own daemons)."""
    import psutil

    me = psutil.Process()
    before, client_before, machine_before = server_cpu_s(app), me.cpu_times(), busy_cpu_s()
    run = asyncio.run(drive(url, clients, duration, load))
    after, client_after, machine_after = server_cpu_s(app), me.cpu_times(), busy_cpu_s()
    if not run["requests"]:
        raise RuntimeError(f"{url}: no request succeeded ({run['errors']} errors)")
    n = run["requests"]
    cpu = {k: (after[k] - before.get(k, 0.0)) / n * 1000.0 for k in after}
    cpu["client"] = (client_after.user + client_after.system - client_before.user - client_before.system) / n * 1000.0
    cpu["machine"] = (machine_after - machine_before) / n * 1000.0
    run["cpu_ms_per_request"] = {k: round(v, 2) for k, v in cpu.items()}
    run["cpu_bound_rps"] = (psutil.cpu_count() or 1) * 1000.0 / cpu["machine"] if cpu["machine"] > 0 else None
    return run


def ingress_url(host: str, port: int, app: str, direct: bool) -> str:
    """Where ``app`` answers HTTP on ``host``: the Serve proxy's ``port``, or with direct ingress its
    ingress replica's own port (from Ray's target groups, the list an external load balancer would be
    given; their IP is the node's, while this local bench binds everything to ``host``)."""
    if not direct:
        return f"http://{host}:{port}/{app}"
    import ray
    from ray.serve.context import _get_global_client

    controller = _get_global_client()._controller
    for group in ray.get(controller.get_target_groups.remote(app)):
        if group.protocol == "HTTP" and group.targets:
            return f"http://{host}:{group.targets[0].port}{group.route_prefix.rstrip('/')}"
    raise RuntimeError(f"direct ingress is on but application {app!r} has no HTTP target")


def median_run(runs: list[dict[str, Any]], mode: str, clients: int) -> dict[str, Any]:
    """The repeat with the median throughput (a measured run, not an average of runs)."""
    same = sorted((r for r in runs if r["batching"] == mode and r["clients"] == clients), key=lambda r: r["rps"])
    return same[(len(same) - 1) // 2]


def paired_ratios(runs: list[dict[str, Any]], clients: int) -> list[float]:
    """Batching on / off throughput of each back-to-back pair of runs, sorted."""
    rps = {(r["batching"], r["repeat"]): r["rps"] for r in runs if r["clients"] == clients}
    repeats = {k for mode, k in rps if mode == "on"}
    return sorted(rps[("on", k)] / rps[("off", k)] for k in repeats)


def request_load(args: argparse.Namespace, settings: Any, pool: list[list[float]]) -> Load:
    """The requests clients send: contexts in the body, or (``--symbols N``) names of stored symbols,
    two years of hourly bars each in the store the replicas read."""
    if not args.symbols:
        return build_load(pool, args.series, args.model)
    names = [f"SYN{i}USDT" for i in range(args.symbols)]
    market = synthesize(names, SyntheticSpec(hours=2 * 365 * 24, seed=0))
    store = Store(settings.store_uri())
    for name, bars in market.bars.items():
        store.write_bars(settings.data.category, name, settings.data.interval, bars)
    return symbol_load(names, args.model)


def start_ray(args: argparse.Namespace) -> str:
    """Start the embedded Ray with the front door asked for; returns the front's name."""
    from fmtrade.jobs.ray_runtime import init_ray, start_local_ray

    if args.direct_ingress:
        os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "1"  # read by every Serve process Ray starts
    if args.python_proxy:
        os.environ[HAPROXY_SWITCH] = "0"
    if args.ray_defaults:
        init_ray("local")
    else:
        start_local_ray()
    haproxy = os.environ.get(HAPROXY_SWITCH) == "1"
    return "direct ingress (no proxy)" if args.direct_ingress else "HAProxy" if haproxy else "Ray's Python proxy"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="chronos-bolt-fm-tiny")
    parser.add_argument("--clients", default="1,16,64")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--batch-wait-s", type=float, default=0.005)
    parser.add_argument("--size", default="tiny", choices=SIZES, help="zoo checkpoint size")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--num-cpus", type=float, default=0.5, help="CPU share of each model replica")
    parser.add_argument(
        "--ray-defaults", action="store_true", help="Ray Serve's stock settings, not jobs.ray_runtime.FAST_PATH_ENV"
    )
    parser.add_argument(
        "--python-proxy", action="store_true", help="Ray's Python proxy answers HTTP instead of HAProxy"
    )
    parser.add_argument(
        "--direct-ingress",
        action="store_true",
        help="clients call the ingress replica's own HTTP port, skipping the Serve proxy",
    )
    parser.add_argument(
        "--series", type=int, default=1, help="series per request (above 1: /v1/forecast/batch requests)"
    )
    parser.add_argument(
        "--symbols", type=int, default=0, help="requests name one of N stored symbols instead of sending a context"
    )
    parser.add_argument("--repeats", type=int, default=3, help="on/off pairs per client count (median reported)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]

    import ray
    from ray import serve

    from fmtrade.serve.app import build_app

    home, settings, spec = bench_home(args.model, args.size)
    pool = contexts(256, args.context)
    load = request_load(args, settings, pool)
    model = build_forecaster(spec, settings)
    # Ray runs a replica with OMP_NUM_THREADS = its whole CPUs (at least 1): match it, or the direct
    # numbers measure a different thread count (2 threads on a busy 2-core VM were 10x slower).
    torch.set_num_threads(max(1, int(args.num_cpus)))
    batches = [b for b in (1, 2, 4, 8, 16, 32, 64) if b <= args.max_batch]
    direct_before = {b: direct_rate(model, pool, b, 2.0) for b in batches}

    small = {"num_cpus": 0.1, "max_ongoing_requests": 512}
    port = 8000 + os.getpid() % 1000

    def app_args(max_batch: int) -> dict[str, Any]:
        return {
            "settings": {"home": str(home)},
            "models": [args.model],
            "model_defaults": {"num_cpus": args.num_cpus, "max_batch_size": max_batch,
                               "batch_wait_timeout_s": args.batch_wait_s if max_batch > 1 else 0.0,
                               "max_ongoing_requests": max(2 * args.max_batch, 8)},
            "ensemble": small,
            "ingress": small,
            "limits": {"default_context_length": args.context},
        }  # fmt: skip

    front = start_ray(args)
    results: dict[str, Any] = {"model": args.model, "size": args.size, "context": args.context, "horizon": HORIZON,
                               "series_per_request": args.series, "symbols": args.symbols,
                               "ray_defaults": args.ray_defaults, "front": front,
                               "direct_ingress": args.direct_ingress, "runs": []}  # fmt: skip
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(app_args(args.max_batch)), name="on", route_prefix="/on", blocking=False)
        serve.run(build_app(app_args(1)), name="off", route_prefix="/off", blocking=False)
        urls = {mode: ingress_url("127.0.0.1", port, mode, args.direct_ingress) for mode in ("on", "off")}
        for mode in ("on", "off"):  # warm-up: first requests pay lazy init in every hop
            asyncio.run(drive(urls[mode], 4, 2.0, load))
        for clients in levels:
            for repeat in range(args.repeats):  # on and off alternate, so drifting load hits both alike
                for mode in ("on", "off"):
                    run = served(urls[mode], mode, clients, args.duration, load)
                    run.update(batching=mode, repeat=repeat)
                    results["runs"].append(run)
                    print(f"{mode:>3} clients={clients:>3} rps={run['rps']:8.1f} p50={run['p50_ms']:.1f}ms "
                          f"p95={run['p95_ms']:.1f}ms p99={run['p99_ms']:.1f}ms mean_batch={run['mean_batch']:.1f} "
                          f"errors={run['errors']} cpu_ms/req={run['cpu_ms_per_request']} "
                          f"cpu-bound rps={run['cpu_bound_rps']:.0f}", file=sys.stderr)  # fmt: skip
    finally:
        ray.shutdown()  # the embedded Ray, Serve with it (see serve.runner.serve_forever)

    runs = {key: median_run(results["runs"], *key) for key in itertools.product(("on", "off"), levels)}
    ratios = {c: paired_ratios(results["runs"], c) for c in levels}
    top = max(levels)
    on_top = runs[("on", top)]
    same_batch = min(batches, key=lambda b: abs(b - on_top["mean_batch"]))
    direct_after = direct_rate(model, pool, same_batch, 2.0)
    direct = (direct_before[same_batch] + direct_after) / 2.0
    single = runs[("on", min(levels))]
    results.update(
        batching_ratio_at_max_clients=statistics.median(ratios[top]),
        batching_ratios={str(c): r for c, r in ratios.items()},
        direct_before={str(b): r for b, r in direct_before.items()},
        direct_same_batch={"batch": same_batch, "before": direct_before[same_batch], "after": direct_after},
        served_over_direct=on_top["forecasts_per_s"] / direct,
        overhead_ms_per_request=single["p50_ms"] - 1000.0 / direct_before[1],
    )
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"\nmodel {args.model} ({args.size} zoo checkpoint), context {args.context}, horizon {HORIZON}, "
          f"{args.duration:g}s per run, {args.series} series per request, "
          f"{'Ray Serve defaults' if args.ray_defaults else 'jobs.ray_runtime.FAST_PATH_ENV'}"
          f", HTTP answered by {front}")  # fmt: skip
    print(
        "| clients | batching on req/s | p50 / p95 / p99 ms | mean batch | batching off req/s | p50 / p95 / p99 ms "
        "| on / off (min-max) |"
    )
    print("|---|---|---|---|---|---|---|")
    for clients in levels:
        on, off = runs[("on", clients)], runs[("off", clients)]
        print(f"| {clients} | {on['rps']:.1f} | {on['p50_ms']:.0f} / {on['p95_ms']:.0f} / {on['p99_ms']:.0f} "
              f"| {on['mean_batch']:.1f} | {off['rps']:.1f} | {off['p50_ms']:.0f} / {off['p95_ms']:.0f} / "
              f"{off['p99_ms']:.0f} | {statistics.median(ratios[clients]):.2f} "
              f"({min(ratios[clients]):.2f}-{max(ratios[clients]):.2f}) |")  # fmt: skip
    for mode in ("on", "off"):
        run = runs[(mode, top)]
        cpu = run["cpu_ms_per_request"]
        print(
            f"\nCPU ms per request at {top} clients, batching {mode}: "
            + ", ".join(f"{k} {v}" for k, v in sorted(cpu.items()) if k != "machine")
            + f"; whole machine {cpu['machine']} -> CPU-bound ceiling {run['cpu_bound_rps']:.0f} req/s"
        )
    print(
        "direct adapter forecasts/s by batch (before serving): "
        + ", ".join(f"{b}: {r:.0f}" for b, r in direct_before.items())
    )
    print(f"direct at batch {same_batch} (mean served batch {on_top['mean_batch']:.1f}): "
          f"{direct_before[same_batch]:.1f} before / {direct_after:.1f} after serving; "
          f"served at {top} clients {on_top['forecasts_per_s']:.1f} forecasts/s "
          f"-> served / direct = {results['served_over_direct']:.2f}")  # fmt: skip
    print(
        f"direct batch 1: {1000.0 / direct_before[1]:.1f} ms/call; served p50 at {min(levels)} client(s) "
        f"{single['p50_ms']:.1f} ms -> Serve overhead {results['overhead_ms_per_request']:.1f} ms/request"
    )


if __name__ == "__main__":
    main()
