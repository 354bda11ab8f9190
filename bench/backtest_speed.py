"""Backtest speed, measured in one run on this machine:

1. windows/s of the batched engine (all windows of all assets in large batches) versus the
   one-call-per-window loop, same model and windows, and the largest difference between them;
2. wall time of the Ray backtest job with 1 versus 2 workers (inference actors and asset
   tasks) on an embedded Ray of that many CPUs, with a CPU-heavy model (default Theta) so that
   work, not process start-up, dominates; Ray's own start-up is timed separately.

    .venv/bin/python bench/backtest_speed.py [--model chronos-bolt-fm-tiny] [--hours 9000]

The zoo model is built with seeded weights into a scratch zoo (untrained: speed only).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import ray

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fmtrade.backtest.config import BacktestConfig  # noqa: E402
from fmtrade.backtest.engine import collect_windows, forecast_batched  # noqa: E402
from fmtrade.backtest.market import make_market  # noqa: E402
from fmtrade.backtest.windows import plan_windows  # noqa: E402
from fmtrade.config import load_settings  # noqa: E402
from fmtrade.data.synthetic import SyntheticSpec, synthesize  # noqa: E402
from fmtrade.jobs.backtest import PoolOptions, run_backtest  # noqa: E402
from fmtrade.jobs.ray_runtime import init_ray  # noqa: E402
from fmtrade.models.registry import active_specs, build_forecaster, select_specs  # noqa: E402
from fmtrade.models.zoo import build_zoo  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="chronos-bolt-fm-tiny", help="model of the batched-vs-loop part")
    parser.add_argument("--ray-model", default="theta", help="model of the 1-vs-2-workers part (CPU-heavy)")
    parser.add_argument("--symbols", type=int, default=3)
    parser.add_argument("--hours", type=int, default=9000, help="synthetic bars per asset")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--horizon", type=int, default=24)
    parser.add_argument("--rebalance", type=int, default=24)
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="fmtrade-bench-"))
    settings = load_settings(overrides={"home": str(scratch), "models": {"device": "cpu"}})
    spec = select_specs(active_specs(settings), [args.model])[0]
    if spec.checkpoint:
        build_zoo(settings, only=[spec.name])
    model = build_forecaster(spec, settings)

    symbols = [f"SYN{i}USDT" for i in range(args.symbols)]
    synth = synthesize(symbols, SyntheticSpec(hours=args.hours, seed=11, start="2023-01-01"))
    markets = {s: make_market(s, synth.bars[s], "60", synth.funding[s]) for s in symbols}
    start = markets[symbols[0]].timestamps[args.context + 1]
    config = BacktestConfig(start=start, end=markets[symbols[0]].timestamps[-1], context=args.context,
                            horizon=args.horizon, rebalance=args.rebalance, category="linear")  # fmt: skip
    batch = collect_windows([(m, plan_windows(m, config)) for m in markets.values()], config.context)
    n = len(batch)

    model.forecast(batch.rows(0, 8).contexts, config.horizon)  # warm-up (lazy init, allocator)
    began = time.perf_counter()
    batched = forecast_batched(model, batch, config.horizon, config.quantile_levels, batch_size=4096)
    t_batched = time.perf_counter() - began
    began = time.perf_counter()
    loop = forecast_batched(model, batch, config.horizon, config.quantile_levels, batch_size=1)
    t_loop = time.perf_counter() - began
    rel = np.abs(batched.quantiles - loop.quantiles) / np.abs(loop.quantiles)
    engine = {
        "model": spec.name, "windows": n, "context": config.context, "horizon": config.horizon,
        "model_max_batch_size": model.max_batch_size,
        "batched_windows_per_s": round(n / t_batched, 1), "loop_windows_per_s": round(n / t_loop, 1),
        "speedup": round(t_loop / t_batched, 1), "max_rel_diff_batched_vs_loop": float(rel.max()),
    }  # fmt: skip
    print(json.dumps({"engine": engine}), flush=True)

    ray_spec = select_specs(active_specs(settings), [args.ray_model])[0]
    if ray_spec.checkpoint:
        build_zoo(settings, only=[ray_spec.name])
    walls = {}
    for workers in (1, 2):
        began = time.perf_counter()
        init_ray("local", num_cpus=workers)
        ray_start = time.perf_counter() - began
        factory = functools.partial(build_forecaster, ray_spec, settings)
        began = time.perf_counter()
        run = run_backtest(markets, {ray_spec.name: factory}, config,
                           options=PoolOptions(actors=workers, num_cpus=1, chunk_size=-(-n // workers)))  # fmt: skip
        walls[workers] = time.perf_counter() - began
        ray.shutdown()
        rows = len(run.summary)
        print(json.dumps({"ray": {"model": ray_spec.name, "workers": workers, "assets": len(markets), "windows": n,
                                  "summary_rows": rows,
                                  "wall_s": round(walls[workers], 2), "ray_start_s": round(ray_start, 2)}}),
              flush=True)  # fmt: skip
    print(json.dumps({"ray_speedup_2_vs_1": round(walls[1] / walls[2], 2)}))


if __name__ == "__main__":
    main()
