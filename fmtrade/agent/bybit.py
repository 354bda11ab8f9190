"""The ``bybit`` broker: signed Bybit v5 REST orders, positions and balances (testnet unless told otherwise).

Why it is safe to retry: every order carries the intent's deterministic ``orderLinkId``. When the
answer to ``/v5/order/create`` is lost (timeout, dropped connection, 5xx), the broker sends the same
order again; if the first one reached the exchange, Bybit answers 110072 (duplicate orderLinkId) and
the broker looks the existing order up instead of placing a second one.

retCodes become typed errors (subclasses of :class:`~fmtrade.data.bybit.BybitError`): 10002
:class:`ClockSkewError`; 10003/10004 :class:`AuthError`; 110004/110007/170131
:class:`InsufficientBalanceError`; 110017/110094/170136/170137/170140 :class:`QuantityError`.
Keys come only from settings (FMTRADE_AGENT__API_KEY / FMTRADE_AGENT__API_SECRET) and never appear in
a log line or an error message.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any
from urllib.parse import urlencode

import httpx

from fmtrade.agent.broker import Account, OrderIntent, OrderState, OrderStatus, Position
from fmtrade.config import BYBIT_MAINNET, BYBIT_TESTNET, Settings
from fmtrade.data.bybit import RETRYABLE_RET_CODES, BybitClient, BybitError, BybitUnavailableError, Instrument
from fmtrade.data.bybit_auth import auth_headers
from fmtrade.errors import InputError

log = logging.getLogger(__name__)

DUPLICATE_ORDER_LINK_ID = 110072


class ClockSkewError(BybitError):
    """10002: the request's timestamp is outside the receive window (sync the clock)."""


class AuthError(BybitError):
    """10003 unknown API key, 10004 bad signature."""


class InsufficientBalanceError(BybitError):
    """110004 / 110007 (derivatives), 170131 (spot): not enough balance for the order."""


class QuantityError(BybitError):
    """The quantity breaks the instrument's rules (step, minimum quantity or notional)."""


_ERRORS: dict[int, type[BybitError]] = {
    10002: ClockSkewError,
    10003: AuthError,
    10004: AuthError,
    110004: InsufficientBalanceError,
    110007: InsufficientBalanceError,
    170131: InsufficientBalanceError,
    110017: QuantityError,
    110094: QuantityError,
    170136: QuantityError,
    170137: QuantityError,
    170140: QuantityError,
}

_STATUS: dict[str, OrderStatus] = {
    "New": "New", "Created": "New", "Untriggered": "New", "Triggered": "New",
    "PartiallyFilled": "PartiallyFilled", "Filled": "Filled", "Rejected": "Rejected",
    "Cancelled": "Cancelled", "PartiallyFilledCanceled": "Cancelled", "Deactivated": "Cancelled",
}  # fmt: skip


def error_for(ret_code: int, ret_msg: str, path: str, params: dict[str, Any] | None = None) -> BybitError:
    """The typed error for a retCode (plain BybitError for the others)."""
    return _ERRORS.get(ret_code, BybitError)(ret_code, ret_msg, path, params)


class _Retry(Exception):
    """One attempt failed in a way a retry may fix."""


def _secret(value: Any, field: str) -> str:
    if value is None or not value.get_secret_value():
        raise InputError(field, f"missing: set FMTRADE_{field.upper().replace('.', '__')} in the environment")
    return str(value.get_secret_value())


def _endpoint(settings: Settings, base_url: str | None, live: bool) -> str:
    """Testnet unless ``live`` and ``agent.confirm_live``; an explicit base URL (replay server) wins."""
    agent = settings.agent
    if live and not agent.confirm_live:
        raise InputError("agent.confirm_live", "must be true (FMTRADE_AGENT__CONFIRM_LIVE=true) to trade on mainnet")
    if not live and not agent.testnet and base_url is None:
        raise InputError("agent.testnet", "is false: mainnet orders need --live and agent.confirm_live")
    return (base_url or (BYBIT_MAINNET if live else BYBIT_TESTNET)).rstrip("/")


def _float(row: dict[str, Any], key: str) -> float:
    raw = row.get(key)
    return float(raw) if raw not in (None, "") else 0.0


def order_state(row: dict[str, Any]) -> OrderState:
    """Bybit's order row (order/realtime, order/history) as an OrderState."""
    filled = _float(row, "cumExecQty")
    status = _STATUS.get(str(row.get("orderStatus")), "New")
    return OrderState(
        order_link_id=str(row.get("orderLinkId", "")),
        order_id=str(row["orderId"]),
        symbol=str(row["symbol"]),
        side=row["side"],
        qty=_float(row, "qty"),
        status=status,
        filled_qty=filled,
        avg_price=_float(row, "avgPrice") if filled > 0 else None,
        fee=_float(row, "cumExecFee"),
        reason=str(row.get("rejectReason")) if status == "Rejected" else None,
    )


class BybitBroker:
    """Market orders, positions and balances over Bybit's signed v5 REST API."""

    name = "bybit"

    def __init__(
        self,
        settings: Settings,
        base_url: str | None = None,
        live: bool = False,
        *,
        category: str = "linear",
        max_attempts: int = 3,
        timeout_s: float | None = None,
    ) -> None:
        self.base_url = _endpoint(settings, base_url, live)
        self._key = _secret(settings.agent.api_key, "agent.api_key")
        self._secret = _secret(settings.agent.api_secret, "agent.api_secret")
        self.recv_window_ms = settings.agent.recv_window_ms
        self.category = category
        self.max_attempts = max(1, max_attempts)
        self._data = settings.data
        timeout = timeout_s if timeout_s is not None else settings.data.timeout_s
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, headers={"User-Agent": "fmtrade"})

    def __repr__(self) -> str:  # never the key
        return f"BybitBroker(base_url={self.base_url!r}, category={self.category!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> BybitBroker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Transport -------------------------------------------------------------------------------
    def _send(self, method: str, path: str, params: dict[str, Any]) -> dict[str, Any]:
        """One signed request; returns ``result`` or raises _Retry / a typed BybitError."""
        if method == "GET":
            payload = urlencode(params)
            headers = auth_headers(self._key, self._secret, payload, self.recv_window_ms)
            request = self._http.build_request("GET", f"{path}?{payload}" if payload else path, headers=headers)
        else:
            payload = json.dumps(params, separators=(",", ":"))
            headers = auth_headers(self._key, self._secret, payload, self.recv_window_ms)
            headers["Content-Type"] = "application/json"
            request = self._http.build_request("POST", path, content=payload.encode(), headers=headers)
        try:
            response = self._http.send(request)
        except httpx.TransportError as exc:  # timeouts included: the answer is lost, not the order
            raise _Retry(f"{type(exc).__name__}") from exc
        if response.status_code == 429 or response.status_code >= 500:
            raise _Retry(f"HTTP {response.status_code}")
        try:
            body = response.json()
            code, msg, result = int(body["retCode"]), str(body.get("retMsg", "")), body.get("result")
        except (ValueError, KeyError, TypeError) as exc:
            raise _Retry(f"malformed answer (HTTP {response.status_code})") from exc
        if code in RETRYABLE_RET_CODES:
            raise _Retry(f"retCode {code}: {msg}")
        if code != 0:
            raise error_for(code, msg, path, params)
        return result if isinstance(result, dict) else {}

    def _call(self, method: str, path: str, params: dict[str, Any]) -> dict[str, Any]:
        """A signed request, retried (re-signed) on transient failures up to ``max_attempts``."""
        for attempt in range(1, self.max_attempts + 1):
            try:
                return self._send(method, path, params)
            except _Retry as exc:
                if attempt == self.max_attempts:
                    raise BybitUnavailableError(path, attempt, str(exc)) from exc
                log.warning("Bybit %s attempt %d/%d failed (%s); retrying", path, attempt, self.max_attempts, exc)
                time.sleep(min(2.0, 0.2 * 2 ** (attempt - 1)))
        raise AssertionError("unreachable")  # pragma: no cover

    # Broker ----------------------------------------------------------------------------------
    def place(self, intent: OrderIntent) -> OrderState:
        """Send the market order; a lost answer is retried and a duplicate resolved by lookup, never doubled."""
        params: dict[str, Any] = {
            "category": intent.category, "symbol": intent.symbol, "side": intent.side, "orderType": "Market",
            "qty": _qty(intent.qty), "orderLinkId": intent.order_link_id,
        }  # fmt: skip
        if intent.reduce_only:
            params["reduceOnly"] = True
        if intent.category == "spot":
            params["marketUnit"] = "baseCoin"
        try:
            created = self._call("POST", "/v5/order/create", params)
        except BybitUnavailableError:
            # Every answer was lost: the order may still have reached the exchange; report it if so.
            found = self.lookup(intent.order_link_id, intent.symbol, intent.category)
            if found is None:
                raise
            return found
        except BybitError as exc:
            if exc.ret_code != DUPLICATE_ORDER_LINK_ID:
                raise
            log.info("order %s already exists at Bybit; looking it up", intent.order_link_id)
        else:
            log.info("order %s placed (orderId %s)", intent.order_link_id, created.get("orderId"))
        found = self.lookup(intent.order_link_id, intent.symbol, intent.category)
        if found is None:
            raise BybitError(0, f"order {intent.order_link_id} was accepted but cannot be found", "/v5/order/realtime")
        return found

    def lookup(self, order_link_id: str, symbol: str, category: str | None = None) -> OrderState | None:
        """The order with this client id: open and recent ones first, then the order history."""
        params = {"category": category or self.category, "symbol": symbol, "orderLinkId": order_link_id}
        for path in ("/v5/order/realtime", "/v5/order/history"):
            rows = self._call("GET", path, params).get("list") or []
            if rows:
                return order_state(rows[0])
        return None

    def account(self) -> Account:
        """Equity from the unified wallet, linear positions marked at Bybit's mark price.

        ``cash`` is equity less the positions' marked notional, so ``equity == cash + sum(qty * mark)``
        as in the paper broker.
        """
        wallet = self._call("GET", "/v5/account/wallet-balance", {"accountType": "UNIFIED"})
        rows = wallet.get("list") or []
        if not rows:
            raise BybitError(0, "wallet-balance returned no UNIFIED account", "/v5/account/wallet-balance")
        equity = _float(rows[0], "totalEquity")
        listed = self._call("GET", "/v5/position/list", {"category": "linear", "settleCoin": "USDT"})
        positions = {}
        for row in listed.get("list") or []:
            size = _float(row, "size")
            if size > 0:
                qty = size if row.get("side") == "Buy" else -size
                positions[row["symbol"]] = Position(
                    symbol=row["symbol"],
                    qty=qty,
                    avg_price=_float(row, "avgPrice"),
                    mark_price=_float(row, "markPrice"),
                )
        marked = sum(p.qty * p.mark_price for p in positions.values())
        return Account(equity=equity, cash=equity - marked, positions=positions)

    def instruments(self, category: str | None = None, symbol: str | None = None) -> list[Instrument]:
        """Quantity step, minimum quantity and notional per symbol (public endpoint, the market-data client)."""
        with BybitClient.from_settings(self._data, self.base_url) as client:
            return client.instruments(category or self.category, symbol)


def _qty(qty: float) -> str:
    """Decimal string without float noise (the risk layer already rounded to the step)."""
    return f"{qty:.10f}".rstrip("0").rstrip(".")
