"""The Kafka consumer's hole guard: a record fetched past a hole in its partition's
offsets is held back and the hole fetched again, until the hole fills or proves real."""

from __future__ import annotations

from tidegate.eventlog.kafka import _HoleGuard


def test_contiguous_offsets_pass() -> None:
    guard = _HoleGuard(grace_s=2.0)
    assert [guard.hole_before(0, offset, now=0.0) for offset in (5, 6, 7)] == [None] * 3


def test_the_first_record_of_a_partition_sets_where_it_starts() -> None:
    """Retention may have removed the head: a member starts wherever the broker says."""
    guard = _HoleGuard(grace_s=2.0)
    assert guard.hole_before(3, 1000, now=0.0) is None
    assert guard.hole_before(4, 0, now=0.0) is None


def test_a_record_past_a_hole_is_held_until_the_hole_fills() -> None:
    guard = _HoleGuard(grace_s=2.0)
    guard.hole_before(0, 10, now=0.0)
    assert guard.hole_before(0, 15, now=0.0) == 11  # fetch again from 11
    assert guard.hole_before(0, 15, now=1.0) == 11  # still a hole, within the grace
    assert [guard.hole_before(0, offset, now=1.1) for offset in range(11, 16)] == [None] * 5
    assert guard.hole_before(0, 16, now=1.2) is None


def test_a_hole_that_stays_past_the_grace_is_passed() -> None:
    guard = _HoleGuard(grace_s=2.0)
    guard.hole_before(0, 10, now=0.0)
    assert guard.hole_before(0, 20, now=0.0) == 11
    assert guard.hole_before(0, 20, now=1.9) == 11
    assert guard.hole_before(0, 20, now=2.0) is None
    assert guard.hole_before(0, 21, now=2.0) is None


def test_partitions_are_independent() -> None:
    guard = _HoleGuard(grace_s=2.0)
    guard.hole_before(0, 10, now=0.0)
    guard.hole_before(1, 50, now=0.0)
    assert guard.hole_before(0, 12, now=0.0) == 11
    assert guard.hole_before(1, 51, now=0.0) is None


def test_records_again_from_before_are_taken_as_a_new_start() -> None:
    """A rebalance or a restart yields from the last commit again (at-least-once)."""
    guard = _HoleGuard(grace_s=2.0)
    for offset in (10, 11, 12):
        guard.hole_before(0, offset, now=0.0)
    assert guard.hole_before(0, 5, now=0.0) is None
    assert guard.hole_before(0, 6, now=0.0) is None


def test_a_moved_partition_starts_a_new_sequence() -> None:
    """After a rebalance another member may have committed further: no hole there."""
    guard = _HoleGuard(grace_s=2.0)
    guard.hole_before(0, 10, now=0.0)
    guard.forget([0])
    assert guard.hole_before(0, 500, now=0.0) is None
