"""The replay server's simulated exchange account: Bybit v5 private endpoints over replayed prices.

One in-memory unified account per API key (``ReplayServer(accounts={key: secret})``), starting with
``initial_balance`` USDT. Every request must be signed (fmtrade.data.bybit_auth): unknown key 10003,
bad signature 10004, a timestamp outside the receive window of the server's *wall* clock 10002.

Orders are market orders that fill at once, as a taker: a buy at the synthetic book's best ask, a sell
at its best bid (the replay clock's last price plus or minus half the synthetic spread), paying the
backtest engine's default taker fee (``backtest.taker_fee_bps``). ``orderLinkId`` is unique per
account (a second use answers 110072, as Bybit does). Linear positions are one-way, margined at
:data:`LEVERAGE` x against the USDT wallet (110007 when the available balance cannot cover the
initial margin and fee) and marked at the replay clock's last price; spot orders move coin balances
(170131 when a coin runs short). Quantity rules come from the served instruments-info: linear
110017 (below ``minOrderQty`` or not a multiple of ``qtyStep``) and 110094 (below
``minNotionalValue``); spot 170136 (below ``minOrderQty``), 170137 (more decimals than
``basePrecision``) and 170140 (below ``minOrderAmt``).

Also served, because users' tools ask for them first: ``/v5/user/query-api`` and
``/v5/account/info`` (ccxt checks the account is unified) and ``/v5/asset/coin/query-info``
(ccxt's currencies).
"""

from __future__ import annotations

import math
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from fmtrade.config import BacktestSettings
from fmtrade.data.bybit_auth import AuthFailure, verify

LEVERAGE = 10.0
SETTLE_COIN = "USDT"
TAKER_FEE = BacktestSettings().taker_fee_bps / 1e4
ORDER_CATEGORIES = ("linear", "spot")

Handler = Callable[[str, dict[str, Any]], dict[str, Any]]


class Reject(Exception):
    """A refused request, answered with Bybit's retCode and retMsg."""

    def __init__(self, msg: str, code: int = 10001) -> None:
        super().__init__(msg)
        self.code = code


class Market(Protocol):
    """What the account needs from the replayed market (fmtrade.data.replay implements it)."""

    def now_ms(self) -> int: ...

    def symbols(self, category: str) -> list[str]: ...

    def quote(self, category: str, symbol: str, now: int) -> tuple[float, float, float]:
        """(best bid, best ask, last price) at replay time ``now``."""
        ...

    def instrument(self, category: str, symbol: str, now: int) -> dict[str, Any]:
        """The instruments-info row of ``symbol`` at replay time ``now``."""
        ...


@dataclass
class _Position:
    qty: float = 0.0  # signed, > 0 long
    avg_price: float = 0.0
    realised: float = 0.0
    updated_ms: int = 0


@dataclass
class _Account:
    wallet: dict[str, float]
    positions: dict[str, _Position] = field(default_factory=dict)  # linear, by symbol
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)  # by orderId, Bybit's row
    links: dict[str, str] = field(default_factory=dict)  # orderLinkId -> orderId


def _fmt(x: float) -> str:
    return f"{x:.10f}".rstrip("0").rstrip(".") if math.isfinite(x) else ""


def _float(params: Mapping[str, Any], name: str) -> float:
    try:
        value = float(params.get(name) or "nan")
    except (TypeError, ValueError) as exc:
        raise Reject(f"params error: {name} must be a number") from exc
    if not math.isfinite(value) or value <= 0:
        raise Reject(f"params error: {name} must be a positive number")
    return value


def _steps(qty: float, step: float) -> float:
    """How far ``qty`` is from a whole number of ``step`` (0 when it is one)."""
    n = qty / step
    return abs(n - round(n))


def _check_linear_qty(qty: float, price: float, rules: dict[str, Any]) -> None:
    lot = rules["lotSizeFilter"]
    step, min_qty = float(lot["qtyStep"]), float(lot["minOrderQty"])
    if qty < min_qty:
        raise Reject(f"orderQty will be truncated to zero: qty {qty} is below minOrderQty {lot['minOrderQty']}", 110017)
    if _steps(qty, step) > 1e-6:
        raise Reject(f"orderQty is not a multiple of qtyStep {lot['qtyStep']}: {qty}", 110017)
    if qty * price < float(lot["minNotionalValue"]):
        raise Reject(f"Order does not meet minimum order value {lot['minNotionalValue']}{SETTLE_COIN}", 110094)


def _check_spot_qty(base_qty: float, price: float, rules: dict[str, Any]) -> None:
    lot = rules["lotSizeFilter"]
    if base_qty < float(lot["minOrderQty"]):
        raise Reject(f"Order quantity lower than the minimum {lot['minOrderQty']}.", 170136)
    if _steps(base_qty, float(lot["basePrecision"])) > 1e-6:
        raise Reject(f"Order volume decimal too long (basePrecision {lot['basePrecision']}).", 170137)
    if base_qty * price < float(lot["minOrderAmt"]):
        raise Reject(f"Transaction amount lower than the minimum {lot['minOrderAmt']}.", 170140)


class SimulatedAccounts:
    """The private endpoints, one :class:`_Account` per API key, state guarded by one lock."""

    def __init__(self, market: Market, secrets: Mapping[str, str], initial_balance: float) -> None:
        self.market = market
        self.secrets = dict(secrets)
        self.initial_balance = float(initial_balance)
        self._accounts: dict[str, _Account] = {}
        self._lock = threading.Lock()
        self._order_seq = 0

    def handlers(self) -> dict[tuple[str, str], Handler]:
        return {
            ("POST", "/v5/order/create"): self.create_order,
            ("GET", "/v5/order/realtime"): self.orders,
            ("GET", "/v5/order/history"): self.orders,
            ("GET", "/v5/position/list"): self.positions,
            ("GET", "/v5/account/wallet-balance"): self.wallet_balance,
            ("GET", "/v5/account/info"): self.account_info,
            ("GET", "/v5/user/query-api"): self.api_key_info,
            ("GET", "/v5/asset/coin/query-info"): self.coin_info,
        }

    def authenticate(self, headers: Mapping[str, str], payload: str) -> str:
        """The API key of a correctly signed request (Bybit's 10002/10003/10004 otherwise)."""
        try:
            return verify(headers, payload, self.secrets)
        except AuthFailure as exc:
            raise Reject(exc.ret_msg, exc.ret_code) from exc

    def _account(self, api_key: str) -> _Account:
        if api_key not in self._accounts:
            self._accounts[api_key] = _Account(wallet={SETTLE_COIN: self.initial_balance})
        return self._accounts[api_key]

    # Orders --------------------------------------------------------------------------------
    def create_order(self, api_key: str, params: dict[str, Any]) -> dict[str, Any]:
        category, symbol = self._market_params(params, ORDER_CATEGORIES)
        side = params.get("side")
        if side not in ("Buy", "Sell"):
            raise Reject("params error: side must be Buy or Sell")
        if params.get("orderType") != "Market":
            raise Reject("params error: the replay server fills Market orders only")
        qty = _float(params, "qty")
        link = str(params.get("orderLinkId") or "")
        with self._lock:
            account = self._account(api_key)
            if link and link in account.links:
                raise Reject("OrderLinkedID is duplicate", 110072)
            now = self.market.now_ms()
            bid, ask, _ = self.market.quote(category, symbol, now)
            price = ask if side == "Buy" else bid
            rules = self.market.instrument(category, symbol, now)
            fill = self._fill_spot if category == "spot" else self._fill_linear
            base_qty, fee = fill(account, symbol, side, qty, price, rules, params)
            return self._record(account, params, category, symbol, link, base_qty, price, fee, now)

    def _fill_linear(
        self, account: _Account, symbol: str, side: str, qty: float, price: float, rules: dict, params: dict
    ) -> tuple[float, float]:
        _check_linear_qty(qty, price, rules)
        position = account.positions.setdefault(symbol, _Position())
        signed = qty if side == "Buy" else -qty
        reduce_only = str(params.get("reduceOnly", "")).lower() == "true"
        if reduce_only and (position.qty == 0 or position.qty * signed > 0 or abs(signed) > abs(position.qty) + 1e-12):
            raise Reject("Reduce-only rule not satisfied", 110017)
        fee = qty * price * TAKER_FEE
        opened = max(0.0, abs(position.qty + signed) - abs(position.qty))
        if opened > 0 and opened * price / LEVERAGE + fee > self._available(account):
            raise Reject("ab not enough for new order", 110007)
        self._apply_linear(position, signed, price)
        account.wallet[SETTLE_COIN] -= fee
        return qty, fee

    @staticmethod
    def _apply_linear(position: _Position, signed: float, price: float) -> None:
        """One-way position update: adding averages the entry, reducing realises PnL, crossing zero flips."""
        old = position.qty
        new = old + signed
        if old == 0 or old * signed > 0:
            position.avg_price = (old * position.avg_price + signed * price) / new
        else:
            closed = min(abs(signed), abs(old))
            position.realised += closed * (price - position.avg_price) * math.copysign(1.0, old)
            if new * old < 0:
                position.avg_price = price
        position.qty = 0.0 if abs(new) < 1e-12 else new
        if position.qty == 0:
            position.avg_price = 0.0

    def _fill_spot(
        self, account: _Account, symbol: str, side: str, qty: float, price: float, rules: dict, params: dict
    ) -> tuple[float, float]:
        base, quote = rules["baseCoin"], rules["quoteCoin"]
        # Bybit: a spot market Buy's qty is in the quote coin unless marketUnit=baseCoin; a Sell's in the base coin.
        unit = params.get("marketUnit") or ("quoteCoin" if side == "Buy" else "baseCoin")
        base_qty = qty / price if unit == "quoteCoin" else qty
        if unit == "quoteCoin":
            base_qty = math.floor(base_qty / float(rules["lotSizeFilter"]["basePrecision"]) + 1e-9) * float(
                rules["lotSizeFilter"]["basePrecision"]
            )
        _check_spot_qty(base_qty, price, rules)
        value = base_qty * price
        fee = value * TAKER_FEE
        pay, pay_amount = (quote, value + fee) if side == "Buy" else (base, base_qty)
        if account.wallet.get(pay, 0.0) + 1e-12 < pay_amount:
            raise Reject("Insufficient balance.", 170131)
        account.wallet[pay] = account.wallet.get(pay, 0.0) - pay_amount
        get, get_amount = (base, base_qty) if side == "Buy" else (quote, value - fee)
        account.wallet[get] = account.wallet.get(get, 0.0) + get_amount
        return base_qty, fee

    def _record(
        self, account: _Account, params: dict, category: str, symbol: str, link: str,
        qty: float, price: float, fee: float, now: int,
    ) -> dict[str, Any]:  # fmt: skip
        self._order_seq += 1
        order_id = str(uuid.UUID(int=self._order_seq))
        account.orders[order_id] = {
            "orderId": order_id, "orderLinkId": link, "symbol": symbol, "category": category,
            "side": params["side"], "orderType": "Market", "timeInForce": "IOC", "price": "0",
            "qty": _fmt(qty), "orderStatus": "Filled", "avgPrice": _fmt(price), "cumExecQty": _fmt(qty),
            "cumExecValue": _fmt(qty * price), "cumExecFee": _fmt(fee), "leavesQty": "0", "leavesValue": "0",
            "reduceOnly": str(params.get("reduceOnly", "")).lower() == "true", "positionIdx": 0,
            "rejectReason": "EC_NoError", "createdTime": str(now), "updatedTime": str(now),
        }  # fmt: skip
        if link:
            account.links[link] = order_id
        if category == "linear":
            account.positions[symbol].updated_ms = now
        return {"orderId": order_id, "orderLinkId": link}

    def orders(self, api_key: str, params: dict[str, Any]) -> dict[str, Any]:
        category = self._category(params, ORDER_CATEGORIES)
        wanted = {k: params.get(k) for k in ("symbol", "orderId", "orderLinkId") if params.get(k)}
        with self._lock:
            rows = [
                dict(row)
                for row in reversed(self._account(api_key).orders.values())
                if row["category"] == category and all(row[k] == v for k, v in wanted.items())
            ]
        for row in rows:
            row.pop("category")
        return {"category": category, "list": rows, "nextPageCursor": ""}

    # Account -------------------------------------------------------------------------------
    def _marks(self, account: _Account) -> dict[str, float]:
        now = self.market.now_ms()
        return {s: self.market.quote("linear", s, now)[2] for s, p in account.positions.items() if p.qty}

    def _unrealised(self, account: _Account, marks: dict[str, float]) -> float:
        return sum(p.qty * (marks[s] - p.avg_price) for s, p in account.positions.items() if p.qty)

    def _initial_margin(self, account: _Account, marks: dict[str, float]) -> float:
        return sum(abs(p.qty) * marks[s] / LEVERAGE for s, p in account.positions.items() if p.qty)

    def _available(self, account: _Account) -> float:
        marks = self._marks(account)
        equity = account.wallet[SETTLE_COIN] + self._realised(account) + self._unrealised(account, marks)
        return equity - self._initial_margin(account, marks)

    @staticmethod
    def _realised(account: _Account) -> float:
        return sum(p.realised for p in account.positions.values())

    def positions(self, api_key: str, params: dict[str, Any]) -> dict[str, Any]:
        category = self._category(params, ("linear", "inverse"))
        symbol = params.get("symbol")
        with self._lock:
            account = self._account(api_key)
            marks = self._marks(account)
            held = [(s, p) for s, p in account.positions.items() if p.qty and (not symbol or s == symbol)]
            rows = [self._position_row(s, p, marks[s]) for s, p in held if category == "linear"]
        return {"category": category, "list": rows, "nextPageCursor": ""}

    @staticmethod
    def _position_row(symbol: str, p: _Position, mark: float) -> dict[str, Any]:
        size = abs(p.qty)
        return {
            "positionIdx": 0, "riskId": 1, "symbol": symbol, "side": "Buy" if p.qty > 0 else "Sell",
            "size": _fmt(size), "avgPrice": _fmt(p.avg_price), "positionValue": _fmt(size * p.avg_price),
            "markPrice": _fmt(mark), "unrealisedPnl": _fmt(p.qty * (mark - p.avg_price)),
            "cumRealisedPnl": _fmt(p.realised), "leverage": _fmt(LEVERAGE), "tradeMode": 0, "autoAddMargin": 0,
            "positionIM": _fmt(size * mark / LEVERAGE), "positionMM": "0", "positionStatus": "Normal",
            "liqPrice": "", "bustPrice": "", "takeProfit": "", "stopLoss": "", "trailingStop": "0",
            "isReduceOnly": False, "createdTime": str(p.updated_ms), "updatedTime": str(p.updated_ms), "seq": 0,
        }  # fmt: skip

    def wallet_balance(self, api_key: str, params: dict[str, Any]) -> dict[str, Any]:
        if params.get("accountType") != "UNIFIED":
            raise Reject("accountType only support UNIFIED.")
        wanted = {c for c in str(params.get("coin") or "").split(",") if c}
        with self._lock:
            account = self._account(api_key)
            marks = self._marks(account)
            upl, im = self._unrealised(account, marks), self._initial_margin(account, marks)
            coins = [self._coin_row(account, coin, upl, im) for coin in sorted(account.wallet)]
        wallet = sum(float(c["usdValue"]) for c in coins) - upl
        equity = wallet + upl
        row = {
            "accountType": "UNIFIED", "totalEquity": _fmt(equity), "totalWalletBalance": _fmt(wallet),
            "totalMarginBalance": _fmt(equity), "totalAvailableBalance": _fmt(equity - im),
            "totalPerpUPL": _fmt(upl), "totalInitialMargin": _fmt(im), "totalMaintenanceMargin": "0",
            "accountIMRate": _fmt(im / equity) if equity > 0 else "0", "accountMMRate": "0", "accountLTV": "0",
            "coin": [c for c in coins if not wanted or c["coin"] in wanted],
        }  # fmt: skip
        return {"list": [row]}

    def _coin_row(self, account: _Account, coin: str, upl: float, im: float) -> dict[str, Any]:
        balance = account.wallet[coin]
        if coin == SETTLE_COIN:
            balance += self._realised(account)
        coin_upl = upl if coin == SETTLE_COIN else 0.0
        price = 1.0 if coin == SETTLE_COIN else self._coin_price(coin)
        return {
            "coin": coin, "walletBalance": _fmt(balance), "equity": _fmt(balance + coin_upl),
            "usdValue": _fmt((balance + coin_upl) * price), "unrealisedPnl": _fmt(coin_upl),
            "cumRealisedPnl": _fmt(self._realised(account) if coin == SETTLE_COIN else 0.0),
            "totalPositionIM": _fmt(im if coin == SETTLE_COIN else 0.0), "totalOrderIM": "0",
            "totalPositionMM": "0", "locked": "0", "borrowAmount": "0", "accruedInterest": "0", "bonus": "0",
            "availableToWithdraw": "", "marginCollateral": True, "collateralSwitch": True, "spotHedgingQty": "0",
        }  # fmt: skip

    def _coin_price(self, coin: str) -> float:
        symbol = f"{coin}{SETTLE_COIN}"
        for category in ("spot", "linear"):
            if symbol in self.market.symbols(category):
                return self.market.quote(category, symbol, self.market.now_ms())[2]
        return 0.0

    # Key and account metadata (ccxt asks before trading) -----------------------------------
    def api_key_info(self, api_key: str, params: dict[str, Any]) -> dict[str, Any]:
        trade = ["Order", "Position"]
        return {
            "id": "1", "note": "fmtrade replay account", "apiKey": api_key, "readOnly": 0, "secret": "",
            "permissions": {"ContractTrade": trade, "Spot": ["SpotTrade"], "Wallet": ["AccountTransfer"]},
            "ips": ["*"], "type": 1, "deadlineDay": -1, "expiredAt": "", "createdAt": "", "unified": 0, "uta": 1,
            "userID": 1, "inviterID": 0, "vipLevel": "No VIP", "mktMakerLevel": "0", "affiliateID": 0,
        }  # fmt: skip

    def account_info(self, api_key: str, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "unifiedMarginStatus": 4, "marginMode": "REGULAR_MARGIN", "isMasterTrader": False,
            "spotHedgingStatus": "OFF", "updatedTime": str(self.market.now_ms()),
        }  # fmt: skip

    def coin_info(self, api_key: str, params: dict[str, Any]) -> dict[str, Any]:
        symbols = [s for category in ORDER_CATEGORIES for s in self.market.symbols(category)]
        coins = {SETTLE_COIN} | {s.removesuffix(SETTLE_COIN) for s in symbols if s.endswith(SETTLE_COIN)}
        wanted = params.get("coin")
        return {
            "rows": [
                {"name": c, "coin": c, "remainAmount": "0", "chains": []}
                for c in sorted(coins)
                if not wanted or c == wanted
            ]
        }

    # Validation ----------------------------------------------------------------------------
    @staticmethod
    def _category(params: Mapping[str, Any], allowed: tuple[str, ...]) -> str:
        category = params.get("category")
        if category not in allowed:
            raise Reject(f"Illegal category (the replay account trades {' and '.join(allowed)})")
        return str(category)

    def _market_params(self, params: Mapping[str, Any], allowed: tuple[str, ...]) -> tuple[str, str]:
        category = self._category(params, allowed)
        symbol = str(params.get("symbol") or "")
        if symbol not in self.market.symbols(category):
            raise Reject(f"params error: symbol invalid ({symbol!r} is not a {category} symbol of the replay store)")
        return category, symbol
