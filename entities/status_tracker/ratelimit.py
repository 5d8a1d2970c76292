"""Per-key rate limits for requests any key may sign (triggers, clause 9): a token bucket per signer.

Anyone can make a key, so a limit per key alone does not bound what strangers store: the tables
such requests write to are bounded too (``trigger_limit``, the log's ``log_limit``). The limiter
itself is bounded: it keeps the buckets of at most ``max_keys`` signers, least recently seen
dropped first (a dropped signer starts again with a full bucket, which is what a fresh key gets
anyway).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from .inventory import TrackerRefusal

__all__ = ["MAX_KEYS", "RateLimiter"]

MAX_KEYS = 10_000  # signers whose buckets are kept (LRU)


class RateLimiter:
    """Token buckets per key: ``rate`` requests per minute, bursts of up to ``burst`` (default:
    one minute's worth, at least 1). Thread-safe; pure apart from its clock."""

    def __init__(self, rate: float, *, burst: float | None = None, max_keys: int = MAX_KEYS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not rate > 0 or max_keys < 1:
            raise ValueError("a rate limit needs a positive rate and room for one key")
        self.per_second = rate / 60.0
        self.burst = max(1.0, float(rate if burst is None else burst))
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._buckets)

    def take(self, key: str) -> float:
        """Take one token from ``key``'s bucket: 0.0 if granted, else the seconds until one is."""
        now = self.clock()
        with self._lock:
            tokens, at = self._buckets.pop(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.per_second)
            wait = 0.0
            if tokens >= 1.0:
                tokens -= 1.0
            else:
                wait = (1.0 - tokens) / self.per_second
            self._buckets[key] = (tokens, now)  # most recently seen last
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        return wait

    def check(self, key: str, what: str = "requests") -> None:
        """Raises:
            TrackerRefusal: ``rate_limited`` (HTTP 429), with ``retry_after`` seconds.
        """
        wait = self.take(key)
        if wait > 0:
            raise TrackerRefusal("rate_limited", f"too many {what} from {key}: at most "
                                 f"{self.per_second * 60:g} a minute", retry_after=round(wait, 3))
