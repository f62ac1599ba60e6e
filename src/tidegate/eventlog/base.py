"""The EventLog Protocol: a durable, partitioned, append-only log of encrypted records."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol

import msgspec


class Record(msgspec.Struct, frozen=True):
    """One record to append. `key` picks the partition (the tenant id keeps order per tenant)."""

    key: str
    value: bytes


class LogRecord(msgspec.Struct, frozen=True):
    """A record as consumed, with its position."""

    partition: int
    offset: int
    key: str
    value: bytes


class Batch(msgspec.Struct, frozen=True):
    """Records handed to one consumer group member; commit it when the work is done."""

    topic: str
    group: str
    records: tuple[LogRecord, ...]


class EventLog(Protocol):
    """Durable, partitioned, append-only log of encrypted records."""

    async def append(self, topic: str, records: Sequence[Record]) -> None:
        """Commit every record durably, or raise BackendUnavailable.

        Returning means the records survive a crash (SQLite commit, Kafka acks=all):
        ingest answers 2xx only after this returns. Concurrent appends are grouped
        into one commit.
        """
        ...

    def consume(self, topic: str, group: str, *, max_records: int = 500) -> AsyncIterator[Batch]:
        """Yield batches for `group` in partition order, woken by appends (no sleep loop).

        After a restart, consumption resumes after the last committed batch: records
        yielded but not committed are yielded again (at-least-once).
        """
        ...

    async def commit(self, batch: Batch) -> None:
        """Mark `batch` done for its group; it is not yielded to that group again."""
        ...

    async def trim(self, topic: str) -> int:
        """Drop records that every consumer group has committed; returns how many.

        A group that has never committed starts at the oldest record still kept (as a
        new Kafka group under retention does). Engines with retention of their own
        (Kafka) do nothing here.
        """
        ...

    async def aclose(self) -> None:
        """Stop consumers (their iterators end) and release the engine."""
        ...
