"""Per-token limits: a write rate (token bucket) and open live connections.

Both are off unless configured (docs/operations.md) and kept per server process:
behind a proxy spreading load over N processes a token gets up to N times the limit.
Live connections are a token's websockets (/ws/subscribe) and Server-Sent Events
streams (/api/stream) together, and a logged-in user's dashboard sockets.
"""

import math
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

_PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*([smh])\s*$")


@dataclass(frozen=True)
class Rate:
    """`count` requests per `period` seconds, in bursts of up to `count`."""

    count: int
    period: float

    @classmethod
    def parse(cls, name: str, raw: str) -> "Rate | None":
        if not raw.strip():
            return None
        match = _RATE.match(raw)
        if match is None or int(match[1]) < 1:
            raise ImproperlyConfigured(
                f"{name} must look like 100/s, 6000/m or 50000/h, not {raw!r}"
            )
        return cls(int(match[1]), _PERIODS[match[2]])

    def __str__(self) -> str:
        unit = {seconds: unit for unit, seconds in _PERIODS.items()}[self.period]
        return f"{self.count}/{unit}"


class RateLimiter:
    """One token bucket per API token: full at `rate.count`, refilled evenly over
    `rate.period`. take() spends one request or says how long until one is due."""

    def __init__(self, rate: Rate, clock=time.monotonic) -> None:
        self.rate = rate
        self.clock = clock
        self._buckets: dict[int, tuple[float, float]] = {}  # token id: (level, at)
        self._lock = threading.Lock()

    def take(self, token_id: int) -> float:
        """0 when the request may go ahead, else the seconds to wait."""
        per_second = self.rate.count / self.rate.period
        now = self.clock()
        with self._lock:
            level, at = self._buckets.get(token_id, (self.rate.count, now))
            level = min(self.rate.count, level + (now - at) * per_second)
            if level >= 1:
                self._buckets[token_id] = (level - 1, now)
                return 0.0
            self._buckets[token_id] = (level, now)
            return (1 - level) / per_second


def retry_after(wait: float) -> str:
    """A Retry-After header value: whole seconds, never 0."""
    return str(max(1, math.ceil(wait)))


Holder = tuple[str, int]  # ("token", id) or ("user", id)


def holder_of(token, user=None) -> Holder | None:
    """Whose live connection this is: the API token's, else the logged-in user's
    (a dashboard's); None for nobody's (a public dashboard's visitor)."""
    if token is not None:
        return ("token", token.pk)
    if user is not None and user.is_authenticated:
        return ("user", user.pk)
    return None


class ConnectionLimiter:
    """Counts each holder's open live connections; open() refuses past `limit`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: Counter[Holder] = Counter()

    def open(self, holder: Holder) -> bool:
        # Called on the event loop only: no lock needed.
        if self.limit and self._open[holder] >= self.limit:
            return False
        self._open[holder] += 1
        return True

    def close(self, holder: Holder) -> None:
        self._open[holder] -= 1
        if self._open[holder] <= 0:
            del self._open[holder]

    def refusal(self, holder: Holder) -> str:
        who = "token" if holder[0] == "token" else "user"
        return (
            f"this {who} already has {self.limit} open live connections on this "
            "server (BOTLNEK_WS_MAX_CONNECTIONS_PER_TOKEN)"
        )


_writes: RateLimiter | None = None
_connections: ConnectionLimiter | None = None


def writes() -> RateLimiter | None:
    """This process's write limiter, or None when BOTLNEK_WRITE_RATE is unset."""
    global _writes
    rate = settings.BOTLNEK_WRITE_RATE
    if rate is None:
        return None
    if _writes is None or _writes.rate != rate:
        _writes = RateLimiter(rate)
    return _writes


def connections() -> ConnectionLimiter:
    global _connections
    limit = settings.BOTLNEK_WS_MAX_CONNECTIONS_PER_TOKEN
    if _connections is None or _connections.limit != limit:
        _connections = ConnectionLimiter(limit)
    return _connections


def reset() -> None:
    """Forget every bucket and count (for tests)."""
    global _writes, _connections
    _writes = _connections = None
