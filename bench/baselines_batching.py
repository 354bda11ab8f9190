"""How to batch the statsforecast baselines, and what the baselines cost.

Compares, in one run on the same contexts, fitting each row with the model's own
``forecast(y, h, level=...)`` (what fmtrade.models.baselines does) against
``StatsForecast(...).forecast`` over one long-format frame (``n_jobs`` 1 and 2), and prints rows/s and the
ratio. Then prints rows/s of every fmtrade baseline through ``Forecaster.forecast``.
Uses the BTCUSDT hourly closes in ../shared/data when present, else a seeded
geometric random walk.

    .venv/bin/python bench/baselines_batching.py [--rows 64] [--context 512] [--horizon 24]
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from statsforecast import StatsForecast
from statsforecast.models import AutoETS, AutoTheta, Naive

from fmtrade.models.baselines import (
    AutoARIMAForecaster,
    AutoETSForecaster,
    NaiveForecaster,
    RandomWalkForecaster,
    SeasonalNaiveForecaster,
    ThetaForecaster,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "binance_spot_1h" / "BTCUSDT.parquet"


def closes(n: int) -> tuple[np.ndarray, str]:
    if SHARED.exists():
        return pd.read_parquet(SHARED, columns=["close"])["close"].to_numpy()[:n], "BTCUSDT 1h closes"
    rng = np.random.default_rng(0)
    return 30_000 * np.exp(np.cumsum(rng.normal(0, 0.006, n))), "seeded geometric random walk"


def rate(fn, rows: int) -> float:
    start = time.perf_counter()
    fn()
    return rows / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--horizon", type=int, default=24)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    prices, source = closes(args.rows * 200 + args.context)
    contexts = [prices[i * 200 : i * 200 + args.context] for i in range(args.rows)]
    logs = [np.log(c / c[-1]) for c in contexts]
    long = pd.DataFrame(
        {
            "unique_id": np.repeat(np.arange(args.rows), args.context),
            "ds": np.tile(np.arange(args.context), args.rows),
            "y": np.concatenate(logs),
        }
    )
    print(f"data: {source}; rows {args.rows}, context {args.context}, horizon {args.horizon}")
    print("per-row model.forecast vs StatsForecast.forecast (rows/s, after a warm-up call each)")
    for name, make in [("Naive", Naive), ("AutoETS", AutoETS), ("AutoTheta", AutoTheta)]:
        make().forecast(y=logs[0], h=args.horizon, level=[80])  # numba compile
        StatsForecast(models=[make()], freq=1).forecast(df=long.iloc[: args.context], h=args.horizon, level=[80])
        per_row = rate(lambda m=make: [m().forecast(y=y, h=args.horizon, level=[80]) for y in logs], args.rows)
        frame, frame2 = (
            rate(
                lambda m=make, j=jobs: StatsForecast(models=[m()], freq=1, n_jobs=j).forecast(
                    df=long, h=args.horizon, level=[80]
                ),
                args.rows,
            )
            for jobs in (1, 2)
        )
        print(
            f"  {name:10s} per-row {per_row:8.1f}  StatsForecast {frame:8.1f}  n_jobs=2 {frame2:8.1f}"
            f"  per-row/StatsForecast {per_row / frame:.2f}"
        )
    print("fmtrade baselines through Forecaster.forecast (rows/s)")
    models = [
        RandomWalkForecaster("random-walk"),
        NaiveForecaster("naive"),
        SeasonalNaiveForecaster("seasonal-naive"),
        AutoETSForecaster("auto-ets"),
        AutoETSForecaster("auto-ets-s24", season_length=24),
        ThetaForecaster("theta-s24", season_length=24),
        AutoARIMAForecaster("auto-arima"),
    ]
    for model in models:
        model.forecast(contexts[:1], args.horizon)
        rows = args.rows if model.name not in ("auto-ets-s24", "auto-arima") else max(4, args.rows // 8)
        print(f"  {model.name:15s} {rate(lambda m=model, n=rows: m.forecast(contexts[:n], args.horizon), rows):8.1f}")


if __name__ == "__main__":
    main()
