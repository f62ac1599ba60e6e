"""The event index on SQLite: routing (dedupe, events, first deliveries), purge, reads."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from tidegate.embedded import EmbeddedDatabase
from tidegate.ids import new_delivery_id
from tidegate.model import Delivery, DeliveryStatus, EventId, TenantId
from tidegate.store.base import EventQuery, RoutedEvent, StoredEvent
from tidegate.store.rows import EVENT_COLUMNS, event_row
from tidegate.store.sqlite.claims import Claims
from tidegate.store.sqlite.database import execute_rows, placeholders
from tidegate.store.sqlite.deliveries import insert_deliveries


class SqliteEventStore:
    """Implements EventStore on the embedded database."""

    def __init__(self, db: EmbeddedDatabase, claims: Claims) -> None:
        self._db = db
        self._claims = claims

    async def record_routed(
        self, events: Sequence[RoutedEvent], *, now_ms: int, dedupe_window_ms: int, lease_ms: int
    ) -> list[Delivery]:
        """Dedupe against the claims (claims.py), then one transaction: the kept events'
        claims appended to the journal, their rows, their deliveries. Set-based, a few
        multi-row statements per batch: each statement is one step of SQLite's VM and one
        GIL round trip with the event loop's thread, where a statement per row would cost
        several per event."""
        claims = self._claims
        async with claims.lock:
            await claims.open()
            keys = [claims.key(e.meta.tenant_id, e.meta.dedupe_index) for e in events]
            taken = await claims.taken(keys, now_ms)
            # The first event of a key wins, in log order; a later one in the same batch
            # (or the same event read twice) is a duplicate of it.
            kept: list[RoutedEvent] = []
            new_keys: list[bytes] = []
            for event, key in zip(events, keys, strict=True):
                if key not in taken:
                    taken.add(key)
                    kept.append(event)
                    new_keys.append(key)
            expires_ms = now_ms + dedupe_window_ms

            def record(c: sqlite3.Connection) -> list[Delivery]:
                claims.journal(c, new_keys, expires_ms)
                # An event id already recorded (an expired claim taken again by an event
                # the log replays) is ignored, and gets no deliveries again.
                inserted = {
                    event_id
                    for (event_id,) in execute_rows(
                        c,
                        "INSERT OR IGNORE INTO events (tenant_id, id, source_id, kind, type,"
                        " name_index, dedupe_index, received_at_ms, ciphertext)"
                        " VALUES {values} RETURNING id",
                        [
                            (
                                e.meta.tenant_id,
                                e.meta.id,
                                e.meta.source_id,
                                e.meta.kind,
                                e.meta.type,
                                e.meta.name_index,
                                e.meta.dedupe_index,
                                e.meta.received_at_ms,
                                e.ciphertext,
                            )
                            for e in kept
                        ],
                    )
                }
                created = [
                    Delivery(
                        id=new_delivery_id(),
                        tenant_id=e.meta.tenant_id,
                        event_id=e.meta.id,
                        destination_id=destination_id,
                        status=DeliveryStatus.PENDING,
                        attempts=0,
                        next_attempt_at_ms=now_ms,
                        created_at_ms=now_ms,
                        updated_at_ms=now_ms,
                    )
                    for e in kept
                    if e.meta.id in inserted
                    for destination_id in e.destination_ids
                ]
                insert_deliveries(c, created, lease_until_ms=now_ms + lease_ms)
                return created

            created = await self._db.write(record)
            claims.claimed(new_keys, expires_ms)
        return created

    async def purge(self, *, now_ms: int, events_before_ms: int) -> int:
        def purge(c: sqlite3.Connection) -> int:
            claims = c.execute(
                "DELETE FROM dedupe WHERE (tenant_id, dedupe_index) IN (SELECT tenant_id,"
                " dedupe_index FROM dedupe WHERE expires_at_ms <= ? LIMIT ?)",
                (now_ms, _PURGE_BATCH),
            ).rowcount
            doomed = (
                "SELECT tenant_id, id FROM events e WHERE received_at_ms < ? AND NOT EXISTS"
                " (SELECT 1 FROM deliveries d WHERE d.tenant_id = e.tenant_id"
                " AND d.event_id = e.id AND d.status = 'pending') LIMIT ?"
            )
            rows = c.execute(doomed, (events_before_ms, _PURGE_BATCH)).fetchall()
            for tenant_id, event_id in rows:
                c.execute(
                    "DELETE FROM attempts WHERE tenant_id = ? AND delivery_id IN"
                    " (SELECT id FROM deliveries WHERE tenant_id = ? AND event_id = ?)",
                    (tenant_id, tenant_id, event_id),
                )
                c.execute(
                    "DELETE FROM deliveries WHERE tenant_id = ? AND event_id = ?",
                    (tenant_id, event_id),
                )
                c.execute(
                    "DELETE FROM events WHERE tenant_id = ? AND id = ?", (tenant_id, event_id)
                )
            return len(rows) + claims

        # Expired claims: those of the claims file (and the journal's, flushed there), and
        # any left in the `dedupe` table by a release from before the claims file.
        return await self._db.write(purge) + await self._claims.flush(now_ms)

    async def get_event(self, tenant_id: TenantId, event_id: EventId) -> StoredEvent | None:
        row = await self._db.read(
            lambda c: c.execute(
                f"SELECT {EVENT_COLUMNS} FROM events WHERE tenant_id = ? AND id = ?",
                (tenant_id, event_id),
            ).fetchone()
        )
        return event_row(row) if row else None

    async def get_events(
        self, tenant_id: TenantId, event_ids: Sequence[EventId]
    ) -> list[StoredEvent]:
        ids = list(dict.fromkeys(event_ids))
        if not ids:
            return []
        rows = await self._db.read(
            lambda c: c.execute(
                f"SELECT {EVENT_COLUMNS} FROM events"
                f" WHERE tenant_id = ? AND id IN ({placeholders(len(ids))})",
                [tenant_id, *ids],
            ).fetchall()
        )
        return [event_row(r) for r in rows]

    async def list_events(self, tenant_id: TenantId, query: EventQuery) -> list[StoredEvent]:
        where = ["tenant_id = ?"]
        args: list[Any] = [tenant_id]
        if query.type is not None:
            where.append("type = ?")
            args.append(query.type)
        if query.name_index is not None:
            where.append("name_index = ?")
            args.append(query.name_index)
        if query.since_ms is not None:
            where.append("received_at_ms >= ?")
            args.append(query.since_ms)
        if query.until_ms is not None:
            where.append("received_at_ms < ?")
            args.append(query.until_ms)
        if query.after_id is not None:
            where.append("id < ?")
            args.append(query.after_id)
        # By name: walk events_name, which holds each name's events in id order (without
        # statistics SQLite would walk the primary key and skip every other name).
        source = "events INDEXED BY events_name" if query.name_index is not None else "events"
        sql = (
            f"SELECT {EVENT_COLUMNS} FROM {source} WHERE {' AND '.join(where)}"
            " ORDER BY id DESC LIMIT ?"
        )
        rows = await self._db.read(lambda c: c.execute(sql, [*args, query.limit]).fetchall())
        return [event_row(r) for r in rows]


# Rows one purge call deletes at most, per table (housekeeping calls again while full).
_PURGE_BATCH = 10_000
