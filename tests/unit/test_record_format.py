"""The log record's value: a RequestRecord, and the formats before it, decoded alike."""

from __future__ import annotations

import msgspec
import pytest

from tidegate.model import (
    EventId,
    EventMeta,
    LogEntry,
    RecordEvent,
    RequestRecord,
    SourceId,
    TenantId,
    decode_record,
)

TENANT, SOURCE = TenantId("ten_a"), SourceId("src_a")


def _entry(n: int, kind: str = "segment") -> LogEntry:
    meta = EventMeta(
        id=EventId(f"evt-{n}"),
        tenant_id=TENANT,
        source_id=SOURCE,
        kind=kind,
        type="track" if n % 2 else "identify",
        received_at_ms=1_700_000_000_000 + n,
        name_index=bytes([n]) * 16,
        dedupe_index=bytes([n + 100]) * 16,
    )
    return LogEntry(meta=meta, ciphertext=b"sealed-%d" % n)


def _request_record(entries: list[LogEntry]) -> bytes:
    events = [
        RecordEvent(
            e.meta.id,
            e.meta.type,
            e.meta.received_at_ms,
            e.meta.name_index,
            e.meta.dedupe_index,
            e.ciphertext,
        )
        for e in entries
    ]
    return msgspec.msgpack.encode(RequestRecord(TENANT, SOURCE, "segment", events))


def test_a_request_record_gives_back_every_event_with_what_they_share() -> None:
    entries = [_entry(n) for n in range(5)]
    value = _request_record(entries)
    assert decode_record(value) == entries
    older = msgspec.msgpack.encode(entries)
    assert len(value) < len(older) * 0.75  # field names, tenant and source said once


@pytest.mark.parametrize("bare", [True, False], ids=["one-bare-entry", "array-of-entries"])
def test_the_earlier_formats_decode_alike(bare: bool) -> None:
    entries = [_entry(n) for n in range(1 if bare else 3)]
    value = msgspec.msgpack.encode(entries[0] if bare else entries)
    assert decode_record(value) == entries


@pytest.mark.parametrize(
    "value",
    [b"", b"\xc1", msgspec.msgpack.encode([3, "ten_a"]), msgspec.msgpack.encode({"x": 1})],
    ids=["empty", "not-msgpack", "unknown-tag", "a-map-of-something-else"],
)
def test_anything_else_is_a_decode_error(value: bytes) -> None:
    with pytest.raises(msgspec.DecodeError):
        decode_record(value)
