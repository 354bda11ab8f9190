"""The run directory: every file written atomically, JSON free of NaN.

``runs/<name>/``: positions.parquet, forecasts.parquet, trades.parquet, summary.json,
metrics.csv, metrics.json, config.json, plots/*.png and report.html.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from fmtrade.backtest.report import render_html, render_plots
from fmtrade.backtest.results import BacktestRun
from fmtrade.io import write_bytes_atomic, write_json_atomic, write_parquet_atomic, write_text_atomic


def clean(value: Any) -> Any:
    """JSON-safe: numpy scalars to Python, NaN/inf to None, timestamps to ISO strings."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return value


def _parquet(path: Path, frame: pd.DataFrame) -> None:
    write_parquet_atomic(path, pa.Table.from_pandas(frame, preserve_index=False))


def write_run(run: BacktestRun, out: str | Path, plots: bool = True) -> Path:
    """Write every output of ``run`` into ``out`` (created if needed); returns the directory."""
    out = Path(out).expanduser()
    positions, forecasts, trades = run.frame("positions"), run.frame("forecasts"), run.frame("trades")
    _parquet(out / "positions.parquet", positions)
    _parquet(out / "forecasts.parquet", forecasts)
    _parquet(out / "trades.parquet", trades)
    write_json_atomic(out / "summary.json", clean(run.summary))
    write_json_atomic(out / "metrics.json", clean(run.metrics))
    write_text_atomic(out / "metrics.csv", pd.DataFrame(run.metrics).to_csv(index=False))
    write_json_atomic(out / "config.json", clean(asdict(run.config)))
    images = render_plots(run, positions, forecasts) if plots else {}
    for name, png in images.items():
        write_bytes_atomic(out / "plots" / name, png)
    write_text_atomic(out / "report.html", render_html(run, images))
    return out
