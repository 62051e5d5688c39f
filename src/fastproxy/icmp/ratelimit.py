"""Token buckets per key, and a logger that cannot be flooded.

Both take ``now`` (``time.monotonic()`` seconds) from the caller, so the sans-I/O
proxy stays deterministic under test.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable


class TokenBucketLimiter:
    """One token bucket per key (a client), refilled at ``rate`` tokens a second up to ``burst``.

    At most ``max_keys`` buckets are kept; when full, the least recently created
    bucket is forgotten (it would have refilled anyway, so a flood of new keys can
    only earn each of them a fresh burst, never unbounded memory).
    """

    __slots__ = ("rate", "burst", "max_keys", "_buckets")

    def __init__(self, rate: float, burst: float, *, max_keys: int = 65536) -> None:
        if rate < 0 or burst < 1 or max_keys < 1:
            raise ValueError("rate must be >= 0, burst >= 1 and max_keys >= 1")
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_keys = max_keys
        # key -> [tokens, last refill time]; a dict keeps insertion order for eviction.
        self._buckets: dict[Hashable, list[float]] = {}

    def allow(self, key: Hashable, now: float) -> bool:
        """Take one token from ``key``'s bucket; False (and nothing taken) when it is empty."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                del self._buckets[next(iter(self._buckets))]
            bucket = self._buckets[key] = [self.burst, now]
        else:
            elapsed = now - bucket[1]
            if elapsed > 0:
                bucket[0] = min(self.burst, bucket[0] + elapsed * self.rate)
                bucket[1] = now
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return True
        return False

    def forget(self, key: Hashable) -> None:
        """Drop ``key``'s bucket (its client went away)."""
        self._buckets.pop(key, None)

    def forget_if(self, predicate: Callable[[Hashable], bool]) -> None:
        """Drop every bucket whose key matches ``predicate`` (for example all of one connection)."""
        for key in [key for key in self._buckets if predicate(key)]:
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)


class RateLimitedLog:
    """Log at most one line per ``interval`` seconds for each event name.

    Lines suppressed in between are counted and the count is reported with the
    next line that gets through, so an operator sees that a flood happened
    without the log becoming the flood.
    """

    __slots__ = ("logger", "interval", "_last", "_suppressed")

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self.logger = logger
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, event: str, now: float, message: str, *args: object) -> bool:
        """Log ``message % args`` at WARNING unless ``event`` was logged less than ``interval`` ago.

        Returns True when the line was written.
        """
        last = self._last.get(event)
        if last is not None and now - last < self.interval:
            self._suppressed[event] = self._suppressed.get(event, 0) + 1
            return False
        self._last[event] = now
        suppressed = self._suppressed.pop(event, 0)
        extra = {"event": event, "suppressed": suppressed}  # JSON logs: the event as a key
        if suppressed:
            self.logger.warning(message + " (%d similar lines suppressed)", *args, suppressed, extra=extra)
        else:
            self.logger.warning(message, *args, extra=extra)
        return True
