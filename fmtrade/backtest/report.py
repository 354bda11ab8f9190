"""Plots and the HTML page of a run: equity vs buy-and-hold, drawdowns, a forecast fan chart.

Matplotlib runs headless (Agg). The HTML embeds the PNGs as data URIs so the page is one
self-contained file; the PNGs are also written next to it.
"""

from __future__ import annotations

import base64
import html
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from fmtrade.backtest.results import BUY_AND_HOLD, BacktestRun  # noqa: E402
from fmtrade.data.intervals import interval_timedelta  # noqa: E402
from fmtrade.ensemble import ENSEMBLE_NAME  # noqa: E402


def _png(fig: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def equity_plot(positions: pd.DataFrame, symbol: str) -> bytes:
    fig, ax = plt.subplots(figsize=(10, 4))
    for model, book in positions[positions["symbol"] == symbol].groupby("model", sort=False):
        style = {"color": "black", "linewidth": 2.0} if model == BUY_AND_HOLD else {"linewidth": 1.0}
        ax.plot(book["timestamp"], book["equity"], label=model, **style)
    ax.set_title(f"{symbol}: equity vs buy-and-hold")
    ax.set_ylabel("equity")
    ax.legend(fontsize=7, ncol=3)
    ax.grid(alpha=0.3)
    return _png(fig)


def drawdown_plot(positions: pd.DataFrame, symbol: str) -> bytes:
    fig, ax = plt.subplots(figsize=(10, 3))
    for model, book in positions[positions["symbol"] == symbol].groupby("model", sort=False):
        ax.plot(book["timestamp"], 100 * book["drawdown"], label=model, linewidth=1.0)
    ax.set_title(f"{symbol}: drawdown (%)")
    ax.legend(fontsize=7, ncol=3)
    ax.grid(alpha=0.3)
    return _png(fig)


def fan_plot(positions: pd.DataFrame, forecasts: pd.DataFrame, symbol: str, horizon: int, bar: pd.Timedelta) -> bytes:
    """The price with each rebalance's forecast of the horizon-end price (bands between quantiles),
    drawn at the bar the forecast is about, for the ensemble (or the first model)."""
    rows = forecasts[forecasts["symbol"] == symbol]
    model = ENSEMBLE_NAME if ENSEMBLE_NAME in set(rows["model"]) else rows["model"].iloc[0]
    rows = rows[rows["model"] == model]
    at = rows["timestamp"] + bar * (horizon - 1)
    levels = sorted(float(c[1:]) for c in rows.columns if c.startswith("q"))
    prices = positions[(positions["symbol"] == symbol) & (positions["model"] == BUY_AND_HOLD)]
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot(prices["timestamp"], prices["price"], color="black", linewidth=0.8, label="close")
    pairs = [(lo, hi) for lo, hi in zip(levels, reversed(levels), strict=True) if lo < hi]
    for k, (lo, hi) in enumerate(pairs):
        band = [rows["last_price"] * (1 + rows[f"q{q:g}"]) for q in (lo, hi)]
        alpha = 0.15 + 0.5 * k / max(len(pairs), 1)
        ax.fill_between(at, band[0], band[1], step="mid", alpha=alpha, color="tab:blue", label=f"{lo:g}-{hi:g}")
    ax.plot(at, rows["last_price"] * (1 + rows["expected_return"]), color="tab:orange", linewidth=0.8, label="mean")
    ax.set_title(f"{symbol}: {model} forecast of the price {horizon} bars ahead")
    ax.legend(fontsize=7, ncol=4)
    ax.grid(alpha=0.3)
    return _png(fig)


def render_plots(run: BacktestRun, positions: pd.DataFrame, forecasts: pd.DataFrame) -> dict[str, bytes]:
    """``{file name: png}`` for every asset."""
    bar = interval_timedelta(run.config.interval)
    plots = {}
    for asset in run.assets:
        s = asset.symbol
        plots[f"{s}_equity.png"] = equity_plot(positions, s)
        plots[f"{s}_drawdown.png"] = drawdown_plot(positions, s)
        if not forecasts.empty and (forecasts["symbol"] == s).any():
            plots[f"{s}_fan.png"] = fan_plot(positions, forecasts, s, run.config.horizon, bar)
    return plots


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return "" if not np.isfinite(value) else f"{value:.4g}"
    return html.escape("" if value is None else str(value))


def render_html(run: BacktestRun, plots: dict[str, bytes]) -> str:
    cfg = run.config
    columns = list(run.summary[0]) if run.summary else []
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r[c])}</td>" for c in columns) + "</tr>" for r in run.summary)
    images = "".join(
        f'<h3>{html.escape(name)}</h3><img alt="{html.escape(name)}" '
        f'src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        for name, png in plots.items()
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>fmtrade backtest</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:12px}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}img{max-width:100%}</style></head><body>"
        f"<h1>Backtest {cfg.start:%Y-%m-%d} .. {cfg.end:%Y-%m-%d}</h1>"
        f"<p>strategy {cfg.strategy}, context {cfg.context}, horizon {cfg.horizon}, rebalance every "
        f"{cfg.rebalance} bars of {cfg.interval}, {cfg.category}, fees {cfg.taker_fee_bps} bps + slippage "
        f"{cfg.slippage_bps} bps, seed {cfg.seed}</p>"
        f"<table><tr>{head}</tr>{body}</table>{images}</body></html>"
    )
