"""The demo's serving step: start the service on a store, ask it for each symbol, stop it.

Used by ``make demo`` (``fmtrade demo``): a plain function returning the forecast
documents and table rows, so the CLI only prints them.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

import httpx
import ray
from ray import serve as ray_serve

from fmtrade.client import forecast_remote
from fmtrade.config import Settings
from fmtrade.jobs.ray_runtime import start_local_ray
from fmtrade.serve.app import build_app
from fmtrade.serve.runner import deploy

INTERVAL_LEVELS = (0.1, 0.5, 0.9)  # the 80% central interval and the median


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def forecast_via_service(
    settings: Settings,
    symbols: Sequence[str],
    store: str,
    *,
    horizon: int = 24,
    models: Sequence[str] | None = None,
    category: str = "linear",
    interval: str = "60",
) -> list[dict[str, Any]]:
    """Serve ``models`` (default: every enabled, built model) over ``store`` on a free local port,
    POST ``/v1/forecast`` for each symbol over HTTP, then shut the service down.

    With no Ray running it starts a local one and stops it at the end, Serve with it;
    ``serve.shutdown()`` is left for a caller's Ray, since in Ray 2.60 it prints a
    "graceful_shutdown failed ... will be retried" warning for its own controller on every stop.
    """
    args = {
        "settings": {"home": str(settings.home), "data": {"store": store}, "models": settings.models.model_dump()},
        "models": list(models) if models else None,
        "model_defaults": {"num_cpus": 0.1},
        "ensemble": {"num_cpus": 0.1},
        "ingress": {"num_cpus": 0.1},
    }
    started_ray = not ray.is_initialized()
    start_local_ray()
    port = _free_port()
    try:
        ray_serve.start(http_options={"host": "127.0.0.1", "port": port})
        url = f"http://127.0.0.1:{port}"
        deploy([("fmtrade-demo", "/", build_app(args))], url, 600.0)
        with httpx.Client() as client:
            return [
                forecast_remote(url, symbol, category=category, interval=interval, horizon=horizon,
                                quantiles=INTERVAL_LEVELS, client=client)
                for symbol in symbols
            ]  # fmt: skip
    finally:
        if started_ray:
            ray.shutdown()
        else:
            ray_serve.shutdown()


def interval_rows(docs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per symbol: last price, the ensemble's median and 80% interval at the horizon end."""
    rows = []
    for doc in docs:
        q = doc["ensemble"]["quantiles"]
        rows.append(
            {
                "symbol": doc["symbol"],
                "last": doc["last_value"],
                "until": doc["timestamps"][-1],
                "median": q["0.5"][-1],
                "q10": q["0.1"][-1],
                "q90": q["0.9"][-1],
                "models": len(doc["models"]),
                "failed": ", ".join(doc["failed"]) or "-",
            }
        )
    return rows
