"""The circuit breaker opens after N failures, probes once after the cooldown, recovers."""

from tidegate.pipeline.breaker import BreakerState, CircuitBreaker


def test_opens_after_consecutive_failures_and_blocks() -> None:
    b = CircuitBreaker(failures_to_open=3, cooldown_s=5)
    for _ in range(3):
        assert b.allow(now=0)
        b.record_failure(now=0)
    assert b.state is BreakerState.OPEN
    assert not b.allow(now=1)
    assert b.retry_in_s(now=1) == 4


def test_single_probe_after_cooldown_then_closes_on_success() -> None:
    b = CircuitBreaker(failures_to_open=1, cooldown_s=5)
    b.record_failure(now=0)
    assert b.allow(now=5)  # the probe
    assert not b.allow(now=5)  # only one
    assert b.record_success() is True
    assert b.state is BreakerState.CLOSED and b.allow(now=6)


def test_failed_probe_doubles_cooldown() -> None:
    b = CircuitBreaker(failures_to_open=1, cooldown_s=5)
    b.record_failure(now=0)
    assert b.allow(now=5)
    b.record_failure(now=5)
    assert not b.allow(now=14)
    assert b.allow(now=15)


def test_success_resets_the_failure_count() -> None:
    b = CircuitBreaker(failures_to_open=2, cooldown_s=5)
    b.record_failure(now=0)
    assert b.record_success() is False
    b.record_failure(now=0)
    assert b.state is BreakerState.CLOSED


def test_a_probe_that_never_reports_is_replaced() -> None:
    b = CircuitBreaker(failures_to_open=1, cooldown_s=5, probe_timeout_s=30)
    b.record_failure(now=0)
    assert b.allow(now=5)
    assert not b.allow(now=20)
    assert b.allow(now=36)
