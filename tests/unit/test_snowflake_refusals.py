"""Rows Snowflake refuses: which errors are a row's fault, how bisection isolates those
rows, and what is refused before loading. Pure logic; the warehouse path is tested end
to end in tests/e2e/test_snowflake.py."""

from __future__ import annotations

import msgspec
import pytest
from snowflake.connector import errors

from tidegate.destinations.base import WarehouseRow
from tidegate.destinations.snowflake import (
    MAX_ROW_BYTES,
    RowsRefused,
    is_row_refusal,
    isolate_refused_rows,
    refusal_before_load,
    refusal_reason,
)
from tidegate.model import EventId, TenantId


@pytest.mark.parametrize(
    ("error", "is_refusal"),
    [
        (errors.ProgrammingError("Timestamp 'x' is not recognized", 100035, "22007"), True),
        (errors.ProgrammingError("Numeric value 'abc' is not recognized", 100038, "22018"), True),
        (errors.ProgrammingError("Error parsing JSON", 100069, "22P02"), True),
        (errors.ProgrammingError("NULL result in a non-nullable column", 100072, "22000"), True),
        (errors.IntegrityError("constraint violated", 100000, "23000"), True),
        (errors.ProgrammingError("Object 'EVENTS' does not exist", 2003, "42S02"), False),
        (errors.ProgrammingError("Insufficient privileges", 3001, "42501"), False),
        (errors.ProgrammingError("Statement reached its timeout", 630, "57014"), False),
        (errors.ProgrammingError("Failure using stage area", 91003, "22000"), False),
        (errors.OperationalError("Could not connect", 250001, "08001"), False),
        (errors.DatabaseError("JWT token is invalid", 390144, "08004"), False),
        (errors.ServiceUnavailableError(), False),
        (OSError("disk full"), False),
    ],
)
def test_only_data_errors_are_the_rows_fault(error: BaseException, is_refusal: bool) -> None:
    assert is_row_refusal(error) is is_refusal


def _refused(msg: str) -> errors.ProgrammingError:
    return errors.ProgrammingError(msg, 100038, "22018")


def test_a_refusal_reason_keeps_snowflakes_message_but_masks_the_value() -> None:
    """Delivery errors are stored in clear and the event is not: its values stay out."""
    reason = refusal_reason(_refused("Numeric value 'guest-42' is not\n   recognized"))
    assert reason.startswith("snowflake refused the row: ")
    assert "Numeric value '***' is not" in reason and "guest-42" not in reason


def _bad_rows_loader(bad: set[int], calls: list[tuple[int, int]]):  # type: ignore[no-untyped-def]
    committed: list[int] = []

    def load(lo: int, hi: int) -> None:
        calls.append((lo, hi))
        if bad & set(range(lo, hi)):
            raise RowsRefused(f"snowflake refused the row: bad in {lo}..{hi}")
        committed.extend(range(lo, hi))

    return load, committed


def test_bisection_loads_every_good_row_once_and_refuses_each_bad_row() -> None:
    # Given 500 rows of which 3 are refused by the warehouse
    calls: list[tuple[int, int]] = []
    load, committed = _bad_rows_loader({7, 8, 400}, calls)

    # When the batch is loaded
    report = isolate_refused_rows(500, load, budget_s=60)

    # Then the 497 others are committed exactly once, the 3 refused with a reason
    assert (
        sorted(committed)
        == sorted(report.loaded)
        == [i for i in range(500) if i not in {7, 8, 400}]
    )
    assert set(report.refused) == {7, 8, 400} and report.failed == [] and report.error is None
    assert all(r.startswith("snowflake refused the row") for r in report.refused.values())
    assert report.loads == len(calls) <= 2 * 3 * 9 + 1  # about 2·k·log2(n), not n


def test_a_batch_without_a_bad_row_is_one_load() -> None:
    calls: list[tuple[int, int]] = []
    load, _ = _bad_rows_loader(set(), calls)
    report = isolate_refused_rows(50, load, budget_s=60)
    assert calls == [(0, 50)] and report.loads == 1 and len(report.loaded) == 50


def test_a_warehouse_failure_mid_bisection_fails_only_the_unresolved_rows() -> None:
    # Given a batch with a bad row, and a warehouse that goes away after two loads
    calls: list[tuple[int, int]] = []
    load_rows, _ = _bad_rows_loader({3}, calls)

    def load(lo: int, hi: int) -> None:
        if len(calls) == 3:
            raise errors.OperationalError("connection reset", 250003, "08006")
        load_rows(lo, hi)

    # When it is loaded
    report = isolate_refused_rows(8, load, budget_s=60)

    # Then rows already loaded stay loaded, the rest fail (to retry), none is refused
    assert calls == [(0, 8), (0, 4), (0, 2)]
    assert report.loaded == [0, 1] and report.refused == {}
    assert report.failed == [2, 3, 4, 5, 6, 7]
    assert report.error is not None and "connection reset" in report.error


def test_isolation_stops_at_its_budget_and_leaves_the_rest_to_retry() -> None:
    now = [0.0]

    def clock() -> float:
        return now[0]

    calls: list[tuple[int, int]] = []
    load_rows, _ = _bad_rows_loader({0}, calls)

    def load(lo: int, hi: int) -> None:
        now[0] += 10  # each load takes 10 s
        load_rows(lo, hi)

    report = isolate_refused_rows(16, load, budget_s=25, clock=clock)
    assert report.loads == 3 and report.refused == {}
    assert sorted(report.failed) == list(range(16)) and report.error is not None
    assert "time ran out" in report.error


def _row(payload: bytes) -> WarehouseRow:
    return WarehouseRow(
        event_id=EventId("e1"), tenant_id=TenantId("t"), type="track", event_name=None,
        user_id=None, anonymous_id=None, message_id="m", sent_at=None,
        received_at="2024-01-01T00:00:00.000+00:00", payload=msgspec.Raw(payload),
    )  # fmt: skip


def test_a_row_over_the_variant_limit_is_refused_before_loading() -> None:
    big = b'{"blob":"' + b"x" * MAX_ROW_BYTES + b'"}'
    reason = refusal_before_load(_row(big))
    assert reason is not None and "16 MB" in reason and "VARIANT" in reason
    assert refusal_before_load(_row(b'{"a":1}')) is None
