"""The run directory: every file written atomically, JSON free of NaN.

``runs/<name>/``: positions.parquet, forecasts.parquet, trades.parquet, summary.json,
metrics.csv, metrics.json, config.json, plots/*.png and report.html.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from upath import UPath

from fmtrade.backtest.report import render_html, render_plots
from fmtrade.backtest.results import BacktestRun
from fmtrade.io import is_remote, write_bytes_atomic, write_json_atomic, write_parquet_atomic, write_text_atomic


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


def run_dir(out: str | os.PathLike[str]) -> UPath:
    """A run directory as a path object, local (``~`` expanded) or on an object store."""
    return UPath(str(out)) if is_remote(out) else UPath(os.path.expanduser(str(out)))


def _parquet(path: UPath, frame: pd.DataFrame) -> None:
    write_parquet_atomic(path, pa.Table.from_pandas(frame, preserve_index=False))


def write_run(run: BacktestRun, out: str | os.PathLike[str], plots: bool = True) -> UPath:
    """Write every output of ``run`` into ``out`` (created if needed: a path, or a URI such as
    ``s3://bucket/runs/x`` that every node and the laptop can reach); returns the directory."""
    directory = run_dir(out)
    positions, forecasts, trades = run.frame("positions"), run.frame("forecasts"), run.frame("trades")
    _parquet(directory / "positions.parquet", positions)
    _parquet(directory / "forecasts.parquet", forecasts)
    _parquet(directory / "trades.parquet", trades)
    write_json_atomic(directory / "summary.json", clean(run.summary))
    write_json_atomic(directory / "metrics.json", clean(run.metrics))
    write_text_atomic(directory / "metrics.csv", pd.DataFrame(run.metrics).to_csv(index=False))
    write_json_atomic(directory / "config.json", clean(asdict(run.config)))
    images = render_plots(run, positions, forecasts) if plots else {}
    for name, png in images.items():
        write_bytes_atomic(directory / "plots" / name, png)
    write_text_atomic(directory / "report.html", render_html(run, images))
    return directory
