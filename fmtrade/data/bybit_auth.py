"""Bybit v5 request signing (HMAC-SHA256), shared by the signed client and the replay server that checks it.

Rules (https://bybit-exchange.github.io/docs/v5/guide#authentication): the signed string is
``timestamp + api_key + recv_window + payload`` where payload is the query string exactly as sent
(GET, unsorted) or the raw JSON body (POST); the signature is the HMAC-SHA256 hex digest keyed by
the secret. The server accepts a timestamp ``t`` when ``server_time - recv_window <= t < server_time + 1000``.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

HEADER_KEY = "X-BAPI-API-KEY"
HEADER_TIMESTAMP = "X-BAPI-TIMESTAMP"
HEADER_SIGN = "X-BAPI-SIGN"
HEADER_RECV_WINDOW = "X-BAPI-RECV-WINDOW"
HEADER_SIGN_TYPE = "X-BAPI-SIGN-TYPE"
DEFAULT_RECV_WINDOW_MS = 5000
FUTURE_TOLERANCE_MS = 1000  # Bybit rejects timestamps more than 1 s ahead of its clock

CLOCK_RET_CODE = 10002
UNKNOWN_KEY_RET_CODE = 10003
BAD_SIGN_RET_CODE = 10004


def sign(secret: str, timestamp_ms: int, api_key: str, recv_window_ms: int, payload: str) -> str:
    """Hex HMAC-SHA256 of ``timestamp + api_key + recv_window + payload`` keyed by ``secret``."""
    message = f"{timestamp_ms}{api_key}{recv_window_ms}{payload}"
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def auth_headers(
    api_key: str,
    secret: str,
    payload: str,
    recv_window_ms: int = DEFAULT_RECV_WINDOW_MS,
    timestamp_ms: int | None = None,
) -> dict[str, str]:
    """The five headers of a signed v5 request (``payload``: query string or JSON body as sent)."""
    ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    return {
        HEADER_KEY: api_key,
        HEADER_TIMESTAMP: str(ts),
        HEADER_SIGN: sign(secret, ts, api_key, recv_window_ms, payload),
        HEADER_RECV_WINDOW: str(recv_window_ms),
        HEADER_SIGN_TYPE: "2",
    }


class AuthFailure(Exception):
    """Why a signed request was refused, as Bybit's retCode and retMsg."""

    def __init__(self, ret_code: int, ret_msg: str) -> None:
        super().__init__(ret_msg)
        self.ret_code = ret_code
        self.ret_msg = ret_msg


def verify(headers: Mapping[str, str], payload: str, secrets: Mapping[str, str], now_ms: int | None = None) -> str:
    """The API key of a correctly signed request, or AuthFailure (10002 clock, 10003 key, 10004 sign).

    ``headers`` must look up case-insensitively (HTTP headers do); ``now_ms`` is the server's wall clock.
    """
    api_key = headers.get(HEADER_KEY) or ""
    secret = secrets.get(api_key)
    if secret is None:
        raise AuthFailure(UNKNOWN_KEY_RET_CODE, "API key is invalid.")
    try:
        ts = int(headers.get(HEADER_TIMESTAMP) or "")
        window = int(headers.get(HEADER_RECV_WINDOW) or DEFAULT_RECV_WINDOW_MS)
    except ValueError as exc:
        raise AuthFailure(10001, "params error: X-BAPI-TIMESTAMP and X-BAPI-RECV-WINDOW must be integers") from exc
    now = int(time.time() * 1000) if now_ms is None else now_ms
    if not now - window <= ts < now + FUTURE_TOLERANCE_MS:
        raise AuthFailure(
            CLOCK_RET_CODE,
            f"invalid request, please check your server timestamp or recv_window param. "
            f"req_timestamp[{ts}],server_timestamp[{now}],recv_window[{window}]",
        )
    expected = sign(secret, ts, api_key, window, payload)
    if not hmac.compare_digest(expected, headers.get(HEADER_SIGN) or ""):
        raise AuthFailure(BAD_SIGN_RET_CODE, "error sign! please check your signature generation algorithm.")
    return api_key
