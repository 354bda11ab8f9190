"""HTTP client of the fmtrade forecast service (``fmtrade forecast --url``, the demo, scripts).

Returns the service's forecast document, which is the local ``fmtrade forecast
--json`` document plus per-model ``adapter`` / ``latency_ms``, ``last_value`` and
``latency_ms``. Errors the service reports (4xx with a JSON detail naming the
field, 503 with each member's reason) become :class:`fmtrade.errors.FmtradeError`
with that text, so the CLI prints one line and exits 2.
"""

from __future__ import annotations

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
    body: dict[str, Any] = {"horizon": horizon}
    if symbol is not None:
        body["symbol"] = symbol
    if context is not None:
        body["context"] = [float(x) for x in context]
    optional = {"category": category, "interval": interval, "models": list(models) if models else None,
                "quantiles": list(quantiles) if quantiles else None, "context_length": context_length}
    body.update({k: v for k, v in optional.items() if v is not None})
    token = token or os.environ.get("FMTRADE_API_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    endpoint = url.rstrip("/") + "/v1/forecast"
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
