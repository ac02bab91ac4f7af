"""A link model: a token bucket (rate, burst) plus a one-way delay, on a clock passed in.

It emulates WAN links in tests and in the benchmark's simulation, and sets the byte budget of a
node's puller (a pull asks for no more than the bucket holds, so a capped link is never
over-subscribed and the responder's scheduler decides what the bytes carry). Pure: the caller
passes ``now``; nothing here sleeps or reads a clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


class TokenBucket:
    """``rate`` bytes per second refill, up to ``burst`` bytes. ``consume`` may drive the level
    negative (a message larger than what was available is a debt paid by waiting), so over any
    interval ``T`` starting full, at most ``burst + rate × T`` bytes are admitted."""

    def __init__(self, rate: float, burst: float, now: float = 0.0) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self.rate = float(rate)
        self.burst = float(burst)
        self._level = float(burst)
        self._at = float(now)

    def level(self, now: float) -> float:
        """Tokens (bytes) available at ``now``; negative while a debt is outstanding."""
        if now > self._at:
            self._level = min(self.burst, self._level + (now - self._at) * self.rate)
            self._at = now
        return self._level

    def budget(self, now: float) -> int:
        """Whole bytes that may be sent at ``now`` without debt."""
        return max(0, math.floor(self.level(now)))

    def consume(self, nbytes: float, now: float) -> None:
        self.level(now)
        self._level -= nbytes

    def ready_at(self, nbytes: float, now: float) -> float:
        """The earliest time at which ``nbytes`` (capped at the burst) are available."""
        need = min(float(nbytes), self.burst) - self.level(now)
        return now if need <= 0 else now + need / self.rate


@dataclass(frozen=True)
class LinkSpec:
    """A directed link: ``rate`` bytes/s (``inf`` for unlimited), ``burst`` bytes and a one-way
    ``delay`` in seconds."""

    rate: float = math.inf
    burst: float = 1 << 20
    delay: float = 0.0


class Link:
    """A directed link carrying whole messages in order: a message of ``n`` bytes starts when
    the previous one has left and the bucket is not in debt, pays ``n`` tokens, and arrives
    ``delay`` seconds after its last byte left (when its debt is paid)."""

    def __init__(self, spec: LinkSpec, now: float = 0.0) -> None:
        self.spec = spec
        self.bucket = None if math.isinf(spec.rate) else TokenBucket(spec.rate, spec.burst, now)
        self._free_at = now
        self.sent_bytes = 0

    def budget(self, now: float) -> int:
        """Bytes a message sent at ``now`` may carry without waiting (for a puller's request)."""
        if self.bucket is None:
            return 1 << 62
        return self.bucket.budget(now)

    def send(self, nbytes: int, now: float) -> float:
        """Send a message at ``now``; returns its arrival time."""
        start = max(now, self._free_at)
        if self.bucket is None:
            self._free_at = start
            self.sent_bytes += nbytes
            return start + self.spec.delay
        start = max(start, self.bucket.ready_at(0.0, start))
        self.bucket.consume(nbytes, start)
        debt = -self.bucket.level(start)
        left = start + max(0.0, debt) / self.bucket.rate
        self._free_at = left
        self.sent_bytes += nbytes
        return left + self.spec.delay
