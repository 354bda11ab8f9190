"""The same backtest job on a local cluster of 1 and of 2 worker nodes, measured in one run:
wall time from `fmtrade cluster submit` to SUCCEEDED, speed-up and scaling efficiency.

Each cluster is real (``ray start`` head + workers on 127.0.0.1, token auth); the head offers no
CPUs, so every task runs on the workers, one CPU each. The job is the real Binance sample (the
shipped one, or ../shared/data/binance_spot_1h when present) with CPU-heavy statistical models,
so that work rather than start-up dominates. Both runs must produce the same summary.

    .venv/bin/python bench/cluster_scaling.py [--symbols BTCUSDT,ETHUSDT,SOLUSDT,BNBUSDT] [--months 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fmtrade.cluster.local import LocalCluster  # noqa: E402
from fmtrade.cluster.submit import submit  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "binance_spot_1h"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def load_data(home: Path, symbols: list[str]) -> str:
    """Real hourly bars into ``home``'s store: ../shared when present, else the shipped sample."""
    env = {**os.environ, "FMTRADE_HOME": str(home)}
    if SHARED.is_dir():
        for symbol in symbols:
            cmd = ["data", "import", str(SHARED / f"{symbol}.parquet"), "--symbol", symbol, "--category", "spot"]
            subprocess.run([sys.executable, "-m", "fmtrade", *cmd], env=env, check=True, capture_output=True)
        return str(SHARED)
    cmd = ["data", "sample", "--symbols", ",".join(symbols)]
    subprocess.run([sys.executable, "-m", "fmtrade", *cmd], env=env, check=True, capture_output=True)
    return "shipped sample"


def run_on(workers: int, home: Path, out: Path, args: argparse.Namespace) -> tuple[float, list[dict]]:
    cluster = LocalCluster(workers=workers, cpus_per_node=1, head_cpus=0, gcs_port=_free_port(),
                           dashboard_port=_free_port())  # fmt: skip
    cluster.up()
    try:
        entrypoint = (
            f"python -m fmtrade backtest --symbols {args.symbols} --models {args.models} --category spot "
            f"--start {args.start} --end {args.end} --out {out} --json"
        )
        job_dir = home / "job"
        job_dir.mkdir(exist_ok=True)
        env = {"FMTRADE_HOME": str(home), "FMTRADE_BACKTEST__INFERENCE_ACTORS": str(args.actors)}
        began = time.perf_counter()
        result = submit(cluster.dashboard_url, entrypoint, job_dir, env, timeout_s=3600)
        wall = time.perf_counter() - began
        if result.status != "SUCCEEDED":
            raise SystemExit(f"job on {workers} worker(s) ended {result.status}:\n{result.logs[-3000:]}")
    finally:
        cluster.down()
    return wall, json.loads((out / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", default="BTCUSDT,ETHUSDT,SOLUSDT,BNBUSDT")
    parser.add_argument("--models", default="theta,auto-ets,naive")
    parser.add_argument("--start", default="2023-02-01")
    parser.add_argument("--end", default="2023-12-01")
    parser.add_argument("--actors", type=int, default=2, help="inference actors per model (both runs)")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="fmtrade-bench-cluster-"))
    source = load_data(home, args.symbols.split(","))
    walls: dict[int, float] = {}
    summaries = {}
    for workers in (1, 2):
        walls[workers], summaries[workers] = run_on(workers, home, home / f"run-{workers}", args)
        print(f"{workers} worker node(s): {walls[workers]:.1f} s", flush=True)
    speedup = walls[1] / walls[2]
    print(json.dumps({
        "machine": {"cpus": psutil.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1)},
        "data": source, "symbols": args.symbols, "models": args.models, "period": [args.start, args.end],
        "inference_actors_per_model": args.actors, "cpus_per_worker": 1, "head_cpus": 0,
        "wall_s": {"1_worker": round(walls[1], 1), "2_workers": round(walls[2], 1)},
        "speedup": round(speedup, 2), "scaling_efficiency": round(speedup / 2, 2),
        "identical_summaries": summaries[1] == summaries[2],
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
