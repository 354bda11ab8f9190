"""Forecasts/s per model at batch 1, 32 and 256 (context 512, horizon 24), and the batch-256/batch-1 ratio.

Every model of the ``local`` registry profile is measured through ``Forecaster.forecast``
(validation, chunking and quantile repair included), with the zoo built fresh (tiny,
seeded initial weights: speed does not depend on training) in a temporary directory.
Contexts are windows of the BTCUSDT hourly closes in ../shared/data when present,
else a seeded synthetic market. Each (model, batch) is warmed up once, then called
repeatedly for at least ``--min-seconds``; forecasts/s = rows forecast / wall time. A batch
larger than a model's registry ``batch_size`` (the ``chunk`` column) runs as several chunks,
as it does in production.

    .venv/bin/python bench/forecast_throughput.py [--models a,b] [--batches 1,32,256] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fmtrade.config import load_settings
from fmtrade.data.synthetic import SyntheticSpec, synthesize
from fmtrade.models.base import DEFAULT_QUANTILES, Forecaster
from fmtrade.models.registry import active_specs, build_forecaster, select_specs
from fmtrade.models.zoo import build_zoo

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "binance_spot_1h" / "BTCUSDT.parquet"


def contexts(count: int, length: int, horizon: int) -> tuple[list[np.ndarray], str]:
    """``count`` distinct windows of real (or synthetic) hourly closes."""
    if SHARED.exists():
        closes, source = pd.read_parquet(SHARED, columns=["close"])["close"].to_numpy(float), f"{SHARED.name}"
    else:
        closes = synthesize(["SYN"], SyntheticSpec(hours=40_000, seed=0)).bars["SYN"]["close"].to_numpy(float)
        source = "synthetic market (seed 0)"
    starts = np.linspace(0, closes.size - length - horizon, count).astype(int)
    return [closes[s : s + length] for s in starts], source


def measure(model: Forecaster, batch: list[np.ndarray], horizon: int, min_seconds: float) -> float:
    seeds = list(range(len(batch)))
    model.forecast(batch, horizon, DEFAULT_QUANTILES, seeds=seeds)  # warm-up: lazy init, allocator, caches
    calls, began = 0, time.perf_counter()
    while True:
        model.forecast(batch, horizon, DEFAULT_QUANTILES, seeds=seeds)
        calls += 1
        elapsed = time.perf_counter() - began
        if elapsed >= min_seconds:
            return calls * len(batch) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=None, help="comma-separated names (default: enabled local models)")
    parser.add_argument("--batches", default="1,32,256")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--horizon", type=int, default=24)
    parser.add_argument("--min-seconds", type=float, default=2.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["FMTRADE_HOME"] = tmp
        os.environ["FMTRADE_MODELS__PROFILE"] = "local"
        settings = load_settings()
        build_zoo(settings)
        specs = select_specs(active_specs(settings), args.models.split(",") if args.models else None)
        pool, source = contexts(max(batches), args.context, args.horizon)
        rows = []
        for spec in specs:
            model = build_forecaster(spec, settings)
            row = {"model": spec.name, "family": spec.family, "chunk": model.max_batch_size}
            for b in batches:
                row[f"batch_{b}"] = float(f"{measure(model, pool[:b], args.horizon, args.min_seconds):.3g}")
                print(f"{spec.name:>22} batch {b:>4}: {row[f'batch_{b}']:>10.3g} forecasts/s", flush=True)
            row["ratio"] = float(f"{row[f'batch_{batches[-1]}'] / row[f'batch_{batches[0]}']:.3g}")
            rows.append(row)

    meta = {
        "context": args.context,
        "horizon": args.horizon,
        "quantiles": len(DEFAULT_QUANTILES),
        "contexts": source,
        "torch_threads": torch.get_num_threads(),
        "load_avg_1m_at_end": round(os.getloadavg()[0], 1),  # the machine may be shared: read numbers with it
        "device": "cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name(),
    }
    if args.json:
        print(json.dumps({"meta": meta, "rows": rows}))
        return
    header = ["model", "chunk", *[f"batch {b}" for b in batches], f"{batches[-1]}/{batches[0]}"]
    print(f"\n{meta}\n" + " | ".join(header) + "\n" + " | ".join("---" for _ in header))
    for row in rows:
        speeds = [f"{row[f'batch_{b}']:.3g}" for b in batches]
        print(" | ".join([row["model"], str(row["chunk"]), *speeds, f"{row['ratio']:.3g}x"]))


if __name__ == "__main__":
    main()
