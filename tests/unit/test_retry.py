"""The retry schedule: parsing, description, next delay with jitter, Retry-After."""

from __future__ import annotations

import dataclasses
import random
from datetime import UTC, datetime, timedelta, timezone

import pytest

from tidegate.errors import ValidationFailed
from tidegate.pipeline.retry import (
    DEFAULT_SCHEDULE,
    MAX_STEP_S,
    MAX_STEPS,
    RetrySchedule,
    parse_retry_after,
)

DAY = 24 * 3600.0


def seeded(seed: int) -> random.Random:
    """Deterministic jitter for the tests (jitter is not security-sensitive)."""
    return random.Random(seed)  # noqa: S311


def refused(text: str) -> str:
    with pytest.raises(ValidationFailed) as info:
        RetrySchedule.parse(text)
    assert info.value.status == 422
    return info.value.detail


# -- the default schedule ----------------------------------------------------------------


def test_default_schedule() -> None:
    assert DEFAULT_SCHEDULE == (0, 5, 30, 120, 900, 3600) + (7200,) * 11
    assert all(isinstance(delay, float) for delay in DEFAULT_SCHEDULE)
    # The last attempt comes at most 24h after the first; one more 2h step would not.
    assert sum(DEFAULT_SCHEDULE) <= DAY < sum(DEFAULT_SCHEDULE) + 7200
    assert RetrySchedule.parse("default").delays_s == DEFAULT_SCHEDULE
    assert RetrySchedule.parse(" Default ") == RetrySchedule.parse("0,5s,30s,2m,15m,1h,2h*11")
    assert RetrySchedule() == RetrySchedule.parse("default")
    assert RetrySchedule().max_attempts == 17
    assert RetrySchedule().jitter == 0.1


# -- parse -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "delays"),
    [
        ("0", (0.0,)),
        ("5", (5.0,)),
        ("5s", (5.0,)),
        ("2m", (120.0,)),
        ("1h", (3600.0,)),
        ("1.5m", (90.0,)),
        ("0.5s", (0.5,)),
        ("0.25h", (900.0,)),
        ("24h", (DAY,)),
        ("1m*3", (60.0, 60.0, 60.0)),
        (" 0 , 10s , 1m * 2 ", (0.0, 10.0, 60.0, 60.0)),
        ("0,5s,30s", (0.0, 5.0, 30.0)),
        ("1h,0", (3600.0, 0.0)),
    ],
)
def test_parse(text: str, delays: tuple[float, ...]) -> None:
    schedule = RetrySchedule.parse(text)
    assert schedule.delays_s == delays
    assert schedule.max_attempts == len(delays)
    assert schedule.jitter == 0.1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 'retry schedule: empty; write "default" or delays such as "0,30s,5m,1h*3"'),
        ("  ", "retry schedule: empty"),
        ("0,,5s", "retry schedule: item 2 is empty"),
        ("0,5s,", "retry schedule: item 3 is empty"),
        ("0,-5s", "retry schedule: item 2 ('-5s'): delays cannot be negative"),
        ("5x", "retry schedule: item 1 ('5x') is not a delay: expected a number"),
        ("5 minutes", "retry schedule: item 1 ('5 minutes') is not a delay"),
        ("5S", "retry schedule: item 1 ('5S') is not a delay"),
        ("1.2345s", "retry schedule: item 1 ('1.2345s') is not a delay"),
        ("1e3", "retry schedule: item 1 ('1e3') is not a delay"),
        ("nan", "retry schedule: item 1 ('nan') is not a delay"),
        ("5s*", "retry schedule: item 1 ('5s*') is not a delay"),
        ("5s*1.5", "retry schedule: item 1 ('5s*1.5') is not a delay"),
        ("5s*0", "retry schedule: item 1 ('5s*0'): the repeat count must be >= 1"),
        ("25h", "retry schedule: item 1 ('25h'): a single delay cannot exceed 24h"),
        ("86401s", "retry schedule: item 1 ('86401s'): a single delay cannot exceed 24h"),
        (
            "1s*101",
            "retry schedule: item 1 ('1s*101'): the schedule would have more than 100 steps",
        ),
        (
            "0," + "1s," * 99 + "1s",
            "retry schedule: item 101 ('1s'): the schedule would have more than 100 steps",
        ),
        (
            "1s*99999999999999999999",
            "retry schedule: item 1 ('1s*99999999999999999999'): the schedule would have more",
        ),
        (
            "24h*7,1s",
            "retry schedule: the delays add up to 7.00 days (604801s); the limit is 7 days",
        ),
    ],
)
def test_parse_refuses(text: str, expected: str) -> None:
    assert refused(text).startswith(expected)


def test_parse_limits_are_inclusive() -> None:
    assert RetrySchedule.parse("24h*7").delays_s == (DAY,) * 7
    assert RetrySchedule.parse(f"1s*{MAX_STEPS}").max_attempts == MAX_STEPS
    assert "characters; the limit is 1024" in refused("0," * 600)


def test_non_string_is_refused() -> None:
    with pytest.raises(ValidationFailed):
        RetrySchedule.parse(5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("delays", "jitter", "fragment"),
    [
        ((), 0.1, "needs at least one delay"),
        ((-1.0,), 0.1, "step 1 must be a finite delay >= 0"),
        ((0.0, float("nan")), 0.1, "step 2 must be a finite delay >= 0"),
        ((float("inf"),), 0.1, "step 1 must be a finite delay >= 0"),
        ((DAY + 1,), 0.1, "step 1 (86401s) is longer than 24h"),
        ((True,), 0.1, "step 1 is not a number"),
        (("5",), 0.1, "step 1 is not a number"),
        ((1.0,) * 101, 0.1, "101 steps; the limit is 100"),
        ((DAY,) * 8, 0.1, "the limit is 7 days"),
        ((1.0,), -0.1, "jitter must be a fraction between 0 and 1"),
        ((1.0,), 1.5, "jitter must be a fraction between 0 and 1"),
    ],
)
def test_direct_construction_is_validated(
    delays: tuple[float, ...], jitter: float, fragment: str
) -> None:
    with pytest.raises(ValidationFailed) as info:
        RetrySchedule(delays, jitter)
    assert fragment in info.value.detail


def test_schedule_is_frozen() -> None:
    schedule = RetrySchedule.parse("0,5s")
    with pytest.raises(dataclasses.FrozenInstanceError):
        schedule.jitter = 0.5  # type: ignore[misc]
    assert RetrySchedule((0, 5)).delays_s == (0.0, 5.0)  # ints are normalised to floats


# -- describe / to_text -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "description", "canonical"),
    [
        (
            "default",
            "immediately, 5s, 30s, 2m, 15m, 1h, then every 2h (11 times)",
            "0,5s,30s,2m,15m,1h,2h*11",
        ),
        ("0", "immediately", "0"),
        ("30s", "30s", "30s"),
        ("90s,5400s,3.6s", "90s, 90m, 3.6s", "90s,90m,3.6s"),
        ("1m*3,1h", "every 1m (3 times), then 1h", "1m*3,1h"),
        ("0*2,10s", "immediately (2 times), then 10s", "0*2,10s"),
        ("0.5s,0*3,1h", "0.5s, then immediately (3 times), then 1h", "0.5s,0*3,1h"),
        ("5s,1m,1m", "5s, then every 1m (2 times)", "5s,1m*2"),
        ("24h*7", "every 24h (7 times)", "24h*7"),
    ],
)
def test_describe_and_to_text(text: str, description: str, canonical: str) -> None:
    schedule = RetrySchedule.parse(text)
    assert schedule.describe() == description
    assert schedule.to_text() == canonical
    assert RetrySchedule.parse(schedule.to_text()) == schedule


# -- next_delay ---------------------------------------------------------------------------


def test_next_delay_follows_the_schedule_without_jitter() -> None:
    schedule = RetrySchedule(DEFAULT_SCHEDULE, jitter=0)
    assert schedule.next_delay(0) == 0  # before the first attempt: immediately
    assert [schedule.next_delay(k) for k in range(1, 7)] == [5, 30, 120, 900, 3600, 7200]
    assert schedule.next_delay(16) == 7200
    assert schedule.next_delay(17) is None  # all 17 attempts made: dead letter
    assert schedule.next_delay(1000) is None


def test_next_delay_refuses_a_negative_count() -> None:
    with pytest.raises(ValueError, match="attempts_made must be >= 0"):
        RetrySchedule().next_delay(-1)


def test_jitter_stays_within_bounds() -> None:
    schedule = RetrySchedule.parse("default")
    rng = seeded(20240601)
    for attempts_made in range(1, schedule.max_attempts):
        scheduled = schedule.delays_s[attempts_made]
        samples = [schedule.next_delay(attempts_made, rng=rng) for _ in range(200)]
        assert all(s is not None for s in samples)
        values = [s for s in samples if s is not None]
        assert min(values) >= scheduled * 0.9
        assert max(values) <= scheduled * 1.1
        assert len(set(values)) > 100  # it does spread
        assert min(values) < scheduled < max(values)


def test_jitter_is_reproducible_with_a_seeded_rng() -> None:
    schedule = RetrySchedule.parse("default")
    first = [schedule.next_delay(k, rng=seeded(7)) for k in range(1, 17)]
    second = [schedule.next_delay(k, rng=seeded(7)) for k in range(1, 17)]
    assert first == second
    assert first[0] == pytest.approx(5 * (1 + seeded(7).uniform(-0.1, 0.1)))


def test_zero_delay_gets_no_jitter_and_full_jitter_never_goes_negative() -> None:
    assert RetrySchedule.parse("0,0").next_delay(1, rng=seeded(1)) == 0
    schedule = RetrySchedule((0.0, 10.0), jitter=1.0)
    rng = seeded(3)
    values = [schedule.next_delay(1, rng=rng) for _ in range(500)]
    assert all(v is not None and 0 <= v <= 20 for v in values)


def test_default_rng_is_used_when_none_is_given() -> None:
    delay = RetrySchedule().next_delay(1)
    assert delay is not None
    assert 4.5 <= delay <= 5.5


def test_retry_after_wins_when_longer() -> None:
    schedule = RetrySchedule(DEFAULT_SCHEDULE, jitter=0)
    assert schedule.next_delay(1, retry_after_s=60) == 60
    assert schedule.next_delay(1, retry_after_s=1) == 5
    assert schedule.next_delay(1, retry_after_s=0) == 5
    assert schedule.next_delay(1, retry_after_s=float("nan")) == 5
    jittered = RetrySchedule(DEFAULT_SCHEDULE)
    delay = jittered.next_delay(2, retry_after_s=1, rng=seeded(1))
    assert delay is not None
    assert 27 <= delay <= 33


def test_retry_after_is_capped_at_a_day() -> None:
    schedule = RetrySchedule(DEFAULT_SCHEDULE, jitter=0)
    assert schedule.next_delay(1, retry_after_s=10 * DAY) == MAX_STEP_S == DAY
    assert schedule.next_delay(1, retry_after_s=float("inf")) == DAY
    jittered = RetrySchedule((0.0, DAY), jitter=0.1)
    delays = [jittered.next_delay(1, rng=seeded(seed)) for seed in range(50)]
    assert all(delay is not None and 0.9 * DAY <= delay <= DAY for delay in delays)


def test_retry_after_does_not_extend_an_exhausted_schedule() -> None:
    assert RetrySchedule.parse("0,5s").next_delay(2, retry_after_s=30) is None


def test_next_delay_returns_floats() -> None:
    schedule = RetrySchedule((0.0, 5.0), jitter=0)
    assert isinstance(schedule.next_delay(1, retry_after_s=60), float)
    assert isinstance(schedule.next_delay(1), float)


# -- parse_retry_after --------------------------------------------------------------------

NOW = datetime(1994, 11, 6, 8, 47, 37, tzinfo=UTC)  # two minutes before the RFC examples


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 120 ", 120.0),
        ("0", 0.0),
        ("007", 7.0),
        ("-5", 0.0),  # negative: retry now
        ("Sun, 06 Nov 1994 08:49:37 GMT", 120.0),  # IMF-fixdate
        ("Sunday, 06-Nov-94 08:49:37 GMT", 120.0),  # obsolete RFC 850
        ("Sun Nov  6 08:49:37 1994", 120.0),  # obsolete asctime
        ("Sun, 06 Nov 1994 08:40:00 GMT", 0.0),  # in the past
        ("Sun, 06 Nov 1994 09:49:37 +0100", 120.0),  # lenient: an explicit offset
        (None, None),
        ("", None),
        ("soon", None),
        ("1.5", None),
        ("+5", None),
        ("12abc", None),
        ("٣", None),  # non-ASCII digits are not delta-seconds
        ("2024-01-01T00:00:00Z", None),
        ("Sun, 32 Nov 1994 08:49:37 GMT", None),
        ("9" * 400, None),  # too large for a float
        ("x" * 500, None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected


def test_parse_retry_after_with_naive_or_offset_now() -> None:
    naive = datetime(1994, 11, 6, 8, 47, 37)
    assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now=naive) == 120.0
    elsewhere = NOW.astimezone(timezone(timedelta(hours=-5)))
    assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now=elsewhere) == 120.0


def test_parse_retry_after_feeds_next_delay() -> None:
    schedule = RetrySchedule(DEFAULT_SCHEDULE, jitter=0)
    hint = parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now=NOW)
    assert schedule.next_delay(1, retry_after_s=hint) == 120
    assert schedule.next_delay(1, retry_after_s=parse_retry_after("garbage", now=NOW)) == 5
