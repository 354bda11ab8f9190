"""Client-side token bucket so a long sync never trips Bybit's IP limit.

Bybit allows 600 HTTP requests per IP in any 5-second window (120/s) and bans
an IP that exceeds it for at least 10 minutes
(https://bybit-exchange.github.io/docs/v5/rate-limit). A bucket refilled at
``rate_per_s`` with ``burst`` tokens sends at most ``burst + 5 * rate_per_s``
requests in any 5 s, so the default (20/s, burst 20) stays at 120 per 5 s,
a fifth of the limit, leaving room for other processes on the same IP.
"""

from __future__ import annotations

import threading
import time

from fmtrade.config import DataSettings
from fmtrade.errors import InputError


class RateLimiter:
    """Thread-safe token bucket. ``acquire()`` blocks until a token is free.

    Tokens are reserved under the lock (the balance may go negative) and the
    caller sleeps outside it, so concurrent callers queue in arrival order and
    never sleep while holding the lock.
    """

    def __init__(self, rate_per_s: float, burst: float | None = None) -> None:
        if rate_per_s <= 0:
            raise InputError("rate_per_s", f"must be > 0, got {rate_per_s}")
        self.rate_per_s = float(rate_per_s)
        self.burst = float(burst if burst is not None else max(1.0, rate_per_s))
        if self.burst < 1:
            raise InputError("burst", f"must be >= 1, got {burst}")
        self._tokens = self.burst
        self._updated = time.monotonic()
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, data: DataSettings) -> RateLimiter | None:
        """The limiter configured by ``data.rate_limit_per_s``; None when ``rate_limit_enabled`` is off."""
        return cls(data.rate_limit_per_s) if data.rate_limit_enabled else None

    def acquire(self, tokens: float = 1.0) -> float:
        """Take ``tokens``, sleeping as long as needed; return the seconds waited."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate_per_s)
            self._updated = now
            self._tokens -= tokens
            wait = -self._tokens / self.rate_per_s if self._tokens < 0 else 0.0
        if wait > 0:
            time.sleep(wait)
        return wait
