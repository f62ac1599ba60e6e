"""The retry schedule: when to try a delivery again, and when to give up. Pure, no I/O.

A schedule is a list of delays, each counted from the previous attempt; entry k is the
wait before attempt k+1, so entry 0 is the wait before the first attempt (0: deliver
immediately) and the schedule allows `len(delays_s)` attempts in all. When they are used
up the delivery is dead-lettered.

Text form (what destinations store): comma-separated delays with a unit `s`, `m` or
`h` (a bare number is seconds), `*N` repeats an entry N times, or the word `default`:

    "0,5s,30s,2m,15m,1h,2h*11"   ==  "default"

The user-facing reference is `docs/filters-and-transforms.md`.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Final

from tidegate.errors import ValidationFailed

__all__ = [
    "DEFAULT_JITTER",
    "DEFAULT_SCHEDULE",
    "MAX_STEPS",
    "MAX_STEP_S",
    "MAX_TOTAL_S",
    "RetrySchedule",
    "parse_retry_after",
]

MAX_STEP_S: Final = 24 * 3600.0  # no single wait is longer than a day...
MAX_TOTAL_S: Final = 7 * 24 * 3600.0  # ...nor the whole schedule longer than a week
MAX_STEPS: Final = 100
DEFAULT_JITTER: Final = 0.1
_MAX_TEXT_LENGTH: Final = 1024

_UNITS: Final = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}
_ITEM: Final = re.compile(
    r"\s*(?P<number>[0-9]+(?:\.[0-9]{1,3})?)\s*(?P<unit>[smh]?)\s*(?:\*\s*(?P<times>[0-9]+))?\s*"
)

# Jitter only spreads retries over time so that failing destinations are not hit in
# lockstep; it is not security-sensitive, so a non-cryptographic generator is right.
_RNG: Final = random.Random()  # noqa: S311


def _default_schedule() -> tuple[float, ...]:
    """0, 5s, 30s, 2m, 15m, 1h, then 2h for as long as the total stays within 24h."""
    delays = [0.0, 5.0, 30.0, 120.0, 900.0, 3600.0]
    while sum(delays) + 7200.0 <= 24 * 3600.0:
        delays.append(7200.0)
    return tuple(delays)


#: Seconds after the previous attempt: 0, 5, 30, 120, 900, 3600, then 7200 eleven times.
#: The last attempt is at most 24h (23h17m35s) after the first, before jitter.
DEFAULT_SCHEDULE: Final[tuple[float, ...]] = _default_schedule()


def _number(value: float) -> str:
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.3f}".rstrip("0").rstrip(".")


def _duration(seconds: float) -> str:
    """7200 -> "2h", 90 -> "90s", 5400 -> "90m", 0.5 -> "0.5s"."""
    for unit, size in (("h", 3600.0), ("m", 60.0)):
        if seconds >= size and float(seconds / size).is_integer():
            return f"{_number(seconds / size)}{unit}"
    return f"{_number(seconds)}s"


def _runs(delays: tuple[float, ...]) -> list[tuple[float, int]]:
    runs: list[tuple[float, int]] = []
    for delay in delays:
        if runs and runs[-1][0] == delay:
            runs[-1] = (delay, runs[-1][1] + 1)
        else:
            runs.append((delay, 1))
    return runs


def _check_totals(delays: tuple[float, ...]) -> None:
    if not delays:
        raise ValidationFailed("retry schedule: needs at least one delay")
    if len(delays) > MAX_STEPS:
        raise ValidationFailed(f"retry schedule: {len(delays)} steps; the limit is {MAX_STEPS}")
    total = sum(delays)
    if total > MAX_TOTAL_S:
        raise ValidationFailed(
            f"retry schedule: the delays add up to {total / 86400:.2f} days "
            f"({_number(total)}s); the limit is 7 days"
        )


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    """Delays between attempts, with +/- `jitter` (a fraction of each delay)."""

    delays_s: tuple[float, ...] = DEFAULT_SCHEDULE
    jitter: float = DEFAULT_JITTER

    def __post_init__(self) -> None:
        delays: list[float] = []
        for index, delay in enumerate(self.delays_s):
            if isinstance(delay, bool) or not isinstance(delay, int | float):
                raise ValidationFailed(f"retry schedule: step {index + 1} is not a number")
            if not math.isfinite(delay) or delay < 0:
                raise ValidationFailed(
                    f"retry schedule: step {index + 1} must be a finite delay >= 0"
                )
            if delay > MAX_STEP_S:
                raise ValidationFailed(
                    f"retry schedule: step {index + 1} ({_duration(delay)}) is longer than 24h"
                )
            delays.append(float(delay))
        _check_totals(tuple(delays))
        if isinstance(self.jitter, bool) or not (
            isinstance(self.jitter, int | float) and 0 <= self.jitter <= 1
        ):
            raise ValidationFailed("retry schedule: jitter must be a fraction between 0 and 1")
        object.__setattr__(self, "delays_s", tuple(delays))
        object.__setattr__(self, "jitter", float(self.jitter))

    @classmethod
    def parse(cls, text: str) -> RetrySchedule:
        """`"0,5s,30s,2m,15m,1h,2h*11"` or `"default"`; refuses what it cannot honour."""
        if not isinstance(text, str):
            raise ValidationFailed("retry schedule: must be a string")
        if len(text) > _MAX_TEXT_LENGTH:
            raise ValidationFailed(
                f"retry schedule: {len(text)} characters; the limit is {_MAX_TEXT_LENGTH}"
            )
        if not text.strip():
            raise ValidationFailed(
                'retry schedule: empty; write "default" or delays such as "0,30s,5m,1h*3"'
            )
        if text.strip().lower() == "default":
            return cls(DEFAULT_SCHEDULE)
        delays: list[float] = []
        for index, raw in enumerate(text.split(","), start=1):
            item = raw.strip()
            where = f"retry schedule: item {index}"
            if not item:
                raise ValidationFailed(f"{where} is empty")
            if item.startswith("-"):
                raise ValidationFailed(f"{where} ({item!r}): delays cannot be negative")
            match = _ITEM.fullmatch(item)
            if match is None:
                raise ValidationFailed(
                    f"{where} ({item!r}) is not a delay: expected a number with an optional "
                    "unit s, m or h (such as 30s, 2m, 1h; at most 3 decimals), optionally "
                    "followed by *N to repeat it N times"
                )
            seconds = round(float(match["number"]) * _UNITS[match["unit"]], 3)
            if seconds > MAX_STEP_S:
                raise ValidationFailed(f"{where} ({item!r}): a single delay cannot exceed 24h")
            times = int(match["times"]) if match["times"] is not None else 1
            if times < 1:
                raise ValidationFailed(f"{where} ({item!r}): the repeat count must be >= 1")
            if len(delays) + times > MAX_STEPS:
                raise ValidationFailed(
                    f"{where} ({item!r}): the schedule would have more than {MAX_STEPS} steps"
                )
            delays.extend([seconds] * times)
        return cls(tuple(delays))

    def to_text(self) -> str:
        """The canonical text form; `parse(s.to_text()).delays_s == s.delays_s`."""
        parts = []
        for delay, count in _runs(self.delays_s):
            text = "0" if delay == 0 else _duration(delay)
            parts.append(text if count == 1 else f"{text}*{count}")
        return ",".join(parts)

    def describe(self) -> str:
        """`"immediately, 5s, 30s, 2m, 15m, 1h, then every 2h (11 times)"`."""
        parts = []
        after_run = False
        for position, (delay, count) in enumerate(_runs(self.delays_s)):
            if count == 1:
                text = "immediately" if delay == 0 else _duration(delay)
            elif delay == 0:
                text = f"immediately ({count} times)"
            else:
                text = f"every {_duration(delay)} ({count} times)"
            is_run = count > 1
            parts.append(f"then {text}" if position > 0 and (is_run or after_run) else text)
            after_run = is_run
        return ", ".join(parts)

    @property
    def max_attempts(self) -> int:
        """Attempts in all, the first one included."""
        return len(self.delays_s)

    def next_delay(
        self,
        attempts_made: int,
        *,
        retry_after_s: float | None = None,
        rng: random.Random | None = None,
    ) -> float | None:
        """Seconds to wait before the next attempt, or None when the schedule is used up.

        `attempts_made` attempts were made already (0 gives the wait before the first).
        The scheduled delay gets +/- `jitter` (never below 0). A server's Retry-After,
        when given, is honoured if it asks for longer. The result is at most 24h.
        """
        if attempts_made < 0:
            raise ValueError(f"attempts_made must be >= 0, got {attempts_made}")
        if attempts_made >= len(self.delays_s):
            return None
        delay = self.delays_s[attempts_made]
        spread = delay * self.jitter
        if spread > 0:
            delay = max(0.0, delay + (rng or _RNG).uniform(-spread, spread))
        if retry_after_s is not None and not math.isnan(retry_after_s):
            delay = max(delay, retry_after_s)
        return float(min(delay, MAX_STEP_S))


_DELTA_SECONDS: Final = re.compile(r"(-?)([0-9]+)")


def parse_retry_after(value: str | None, *, now: datetime) -> float | None:
    """Seconds to wait from a Retry-After header (RFC 9110 section 10.2.3).

    Accepts delay-seconds (`120`) or an HTTP-date in any of the three formats HTTP
    recipients must accept (IMF-fixdate, RFC 850, asctime; a date without a zone is
    taken as GMT). A date in the past or a negative number gives 0; anything else
    (including a number too large for a float) gives None. `now` without a zone is
    taken as UTC.
    """
    if value is None:
        return None
    text = value.strip()
    delta = _DELTA_SECONDS.fullmatch(text)
    if delta is not None:
        if delta[1]:
            return 0.0
        seconds = float(delta[2])
        return seconds if math.isfinite(seconds) else None
    if not text or len(text) > 64:
        return None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())
