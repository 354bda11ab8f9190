"""HTTP client of the fmtrade forecast service (``fmtrade forecast --url``, the demo, scripts).

Returns the service's forecast document: the one ``fmtrade forecast --json`` prints
(:class:`fmtrade.schemas.ForecastResponse`, built by :func:`fmtrade.forecasting.forecast_document`).
Errors the service reports (4xx with a JSON detail naming the field, 503 with each
member's reason) become :class:`fmtrade.errors.FmtradeError` with that text, so the
CLI prints one line and exits 2.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import httpx

from fmtrade.errors import FmtradeError, InputError


class RemoteError(FmtradeError):
    """The service answered with an error status (the message holds its detail)."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except ValueError:
        return response.text[:500]
    if isinstance(detail, list):
        parts = []
        for item in detail:
            loc = [str(p) for p in item.get("loc", []) if p != "body"]
            parts.append(f"{'.'.join(loc) or 'body'}: {item.get('msg')}")
        return "; ".join(parts)
    if isinstance(detail, dict) and "failed" in detail:
        reasons = "; ".join(f"{k}: {v}" for k, v in detail["failed"].items())
        return f"{detail.get('message', 'failed')} ({reasons})"
    return str(detail)


def forecast_remote(
    url: str,
    symbol: str | None = None,
    context: Sequence[float] | None = None,
    *,
    category: str | None = None,
    interval: str | None = None,
    horizon: int = 24,
    quantiles: Sequence[float] | None = None,
    models: Sequence[str] | None = None,
    context_length: int | None = None,
    token: str | None = None,
    timeout_s: float = 120.0,
    client: httpx.Client | None = None,
) -> dict[str, Any]:
    """POST ``/v1/forecast`` and return the forecast document.

    ``token`` defaults to ``FMTRADE_API_TOKEN``; pass ``client`` to reuse a connection pool.
    """
    if (symbol is None) == (context is None):
        raise InputError("symbol", "give exactly one of symbol or context")
    body = _options(category, interval, horizon, quantiles, models, context_length)
    body.update(_series(symbol, "symbol") if symbol is not None else _series(context or [], "context"))
    return _post(url, "/v1/forecast", body, token, timeout_s, client)


def forecast_batch_remote(
    url: str,
    series: Sequence[str | Sequence[float]],
    *,
    category: str | None = None,
    interval: str | None = None,
    horizon: int = 24,
    quantiles: Sequence[float] | None = None,
    models: Sequence[str] | None = None,
    context_length: int | None = None,
    token: str | None = None,
    timeout_s: float = 120.0,
    client: httpx.Client | None = None,
) -> list[dict[str, Any]]:
    """POST ``/v1/forecast/batch``: one forecast document per item of ``series`` (a stored symbol
    or an explicit context), in order. Many series in one request share the service's per-request
    cost, which on a small machine is most of the cost of a small model's forecast."""
    if not series:
        raise InputError("series", "give at least one symbol or context")
    body = _options(category, interval, horizon, quantiles, models, context_length)
    body["series"] = [_series(item, f"series[{i}].context") for i, item in enumerate(series)]
    return _post(url, "/v1/forecast/batch", body, token, timeout_s, client)["results"]


def _series(item: str | Sequence[float], field: str) -> dict[str, Any]:
    """The body of one series; a context must be finite here already, since JSON cannot carry NaN."""
    if isinstance(item, str):
        return {"symbol": item}
    values = [float(x) for x in item]
    bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
    if bad is not None:
        raise InputError(f"{field}[{bad}]", f"must be a finite number, got {values[bad]}")
    return {"context": values}


def _options(
    category: str | None,
    interval: str | None,
    horizon: int,
    quantiles: Sequence[float] | None,
    models: Sequence[str] | None,
    context_length: int | None,
) -> dict[str, Any]:
    optional = {"category": category, "interval": interval, "models": list(models) if models else None,
                "quantiles": list(quantiles) if quantiles else None, "context_length": context_length}  # fmt: skip
    return {"horizon": horizon, **{k: v for k, v in optional.items() if v is not None}}


def _post(
    url: str, route: str, body: dict[str, Any], token: str | None, timeout_s: float, client: httpx.Client | None
) -> dict[str, Any]:
    token = token or os.environ.get("FMTRADE_API_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    endpoint = url.rstrip("/") + route
    try:
        if client is not None:
            response = client.post(endpoint, json=body, headers=headers, timeout=timeout_s)
        else:
            response = httpx.post(endpoint, json=body, headers=headers, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise RemoteError(0, f"url: cannot reach the forecast service at {url} ({exc})") from exc
    if response.status_code != 200:
        raise RemoteError(response.status_code, f"forecast service ({response.status_code}): {_detail(response)}")
    return response.json()
