"""A per-destination circuit breaker: stop hammering a dead endpoint, probe, recover fast.

closed --(N consecutive failures)--> open --(cooldown elapsed)--> half-open: one probe
half-open --(probe succeeds)--> closed;  --(probe fails)--> open, cooldown doubled (capped)
"""

from __future__ import annotations

import time
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(
        self,
        *,
        failures_to_open: int,
        cooldown_s: float,
        max_cooldown_s: float = 60.0,
        probe_timeout_s: float = 60.0,
    ) -> None:
        self._threshold = failures_to_open
        self._base_cooldown = cooldown_s
        self._max_cooldown = max_cooldown_s
        self._cooldown = cooldown_s
        self._failures = 0
        self._opened_at = 0.0
        self._probe_at = 0.0
        self._probe_timeout = probe_timeout_s
        self.state = BreakerState.CLOSED

    def allow(self, now: float | None = None) -> bool:
        """May an attempt go out now? In half-open, only the single probe may."""
        now = time.monotonic() if now is None else now
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN and now >= self._opened_at + self._cooldown:
            self.state = BreakerState.HALF_OPEN
            self._probe_at = now
            return True
        if self.state is BreakerState.HALF_OPEN and now >= self._probe_at + self._probe_timeout:
            self._probe_at = now  # the probe never reported back: send another
            return True
        return False

    def retry_in_s(self, now: float | None = None) -> float:
        """Seconds until the next probe may go out (0 when closed)."""
        if self.state is BreakerState.CLOSED:
            return 0.0
        now = time.monotonic() if now is None else now
        return max(0.0, self._opened_at + self._cooldown - now) or self._cooldown

    def record_success(self) -> bool:
        """Returns True when this success closed an open breaker (drain its backlog)."""
        recovered = self.state is not BreakerState.CLOSED
        self.state = BreakerState.CLOSED
        self._failures = 0
        self._cooldown = self._base_cooldown
        return recovered

    def record_alive(self) -> None:
        """The endpoint answered (not with a 5xx): consecutive failures start over."""
        if self.state is BreakerState.CLOSED:
            self._failures = 0

    def record_failure(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self.state is BreakerState.HALF_OPEN:
            self._cooldown = min(self._cooldown * 2, self._max_cooldown)
            self.state = BreakerState.OPEN
            self._opened_at = now
            return
        self._failures += 1
        if self.state is BreakerState.CLOSED and self._failures >= self._threshold:
            self.state = BreakerState.OPEN
            self._opened_at = now
