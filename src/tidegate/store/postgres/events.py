"""The event index on PostgreSQL: routing (dedupe, events, first deliveries), purge, reads."""

from __future__ import annotations

from collections.abc import Sequence

from tidegate.model import Delivery, EventId, TenantId
from tidegate.store.base import EventQuery, RoutedEvent, StoredEvent
from tidegate.store.postgres.database import PostgresDatabase, filters, params, scalar
from tidegate.store.postgres.deliveries import insert_deliveries, new_delivery
from tidegate.store.rows import EVENT_COLUMNS, event_row

_PURGE_BATCH = 10_000


class PostgresEventStore:
    """Implements EventStore on PostgreSQL."""

    def __init__(self, db: PostgresDatabase) -> None:
        self._db = db

    async def record_routed(
        self, events: Sequence[RoutedEvent], *, now_ms: int, dedupe_window_ms: int, lease_ms: int
    ) -> list[Delivery]:
        if not events:
            return []
        created: list[Delivery] = []
        # Pipelined: each phase sends every statement, then reads every answer, so a batch
        # costs three round trips, not three per event. Statements still run in order, so
        # a batch holding two events with one dedupe key keeps the first, as one at a time.
        async with self._db.transaction() as conn, conn.pipeline():
            owners = []
            for item in events:
                m = item.meta
                await conn.execute(
                    "INSERT INTO dedupe (tenant_id, dedupe_index, event_id, expires_at_ms)"
                    " VALUES (%s, %s, %s, %s) ON CONFLICT (tenant_id, dedupe_index) DO UPDATE"
                    " SET event_id = excluded.event_id, expires_at_ms = excluded.expires_at_ms"
                    " WHERE dedupe.expires_at_ms <= %s",
                    (m.tenant_id, m.dedupe_index, m.id, now_ms + dedupe_window_ms, now_ms),
                )
                owners.append(
                    await conn.execute(
                        "SELECT event_id FROM dedupe WHERE tenant_id = %s AND dedupe_index = %s",
                        (m.tenant_id, m.dedupe_index),
                    )
                )
            inserts = []
            for item, owner in zip(events, owners, strict=True):
                if await scalar(owner) != item.meta.id:
                    continue  # a duplicate of an event kept within the window
                m = item.meta
                inserts.append(
                    (
                        item,
                        await conn.execute(
                            f"INSERT INTO events ({EVENT_COLUMNS}) VALUES ({params(9)})"
                            " ON CONFLICT (tenant_id, id) DO NOTHING RETURNING id",
                            (
                                m.id,
                                m.tenant_id,
                                m.source_id,
                                m.kind,
                                m.type,
                                m.name_index,
                                m.dedupe_index,
                                m.received_at_ms,
                                item.ciphertext,
                            ),
                        ),
                    )
                )
            for item, inserted in inserts:
                if await inserted.fetchone() is None:
                    continue  # this very event was recorded before (log replayed after a crash)
                created.extend(
                    new_delivery(item.meta.tenant_id, item.meta.id, destination_id, now_ms)
                    for destination_id in item.destination_ids
                )
            await insert_deliveries(conn, created, lease_until_ms=now_ms + lease_ms)
        return created

    async def purge(self, *, now_ms: int, events_before_ms: int) -> int:
        async with self._db.transaction() as conn:
            await conn.execute("DELETE FROM dedupe WHERE expires_at_ms <= %s", (now_ms,))
            # Locked, so a concurrent replay_events (FOR SHARE) waits and then skips them;
            # skipping locked rows lets two workers' housekeeping run side by side.
            cur = await conn.execute(
                "SELECT tenant_id, id FROM events e WHERE received_at_ms < %s AND NOT EXISTS"
                " (SELECT 1 FROM deliveries d WHERE d.tenant_id = e.tenant_id"
                " AND d.event_id = e.id AND d.status = 'pending')"
                " LIMIT %s FOR UPDATE SKIP LOCKED",
                (events_before_ms, _PURGE_BATCH),
            )
            rows = await cur.fetchall()
            if not rows:
                return 0
            doomed = "SELECT * FROM unnest(%s::text[], %s::text[])"
            keys = ([r[0] for r in rows], [r[1] for r in rows])
            await conn.execute(
                "DELETE FROM attempts WHERE (tenant_id, delivery_id) IN (SELECT tenant_id, id"
                f" FROM deliveries WHERE (tenant_id, event_id) IN ({doomed}))",
                keys,
            )
            await conn.execute(
                f"DELETE FROM deliveries WHERE (tenant_id, event_id) IN ({doomed})", keys
            )
            await conn.execute(f"DELETE FROM events WHERE (tenant_id, id) IN ({doomed})", keys)
            return len(rows)

    async def get_event(self, tenant_id: TenantId, event_id: EventId) -> StoredEvent | None:
        row = await self._db.fetch_one(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE tenant_id = %s AND id = %s",
            (tenant_id, event_id),
        )
        return event_row(row) if row else None

    async def get_events(
        self, tenant_id: TenantId, event_ids: Sequence[EventId]
    ) -> list[StoredEvent]:
        ids = list(dict.fromkeys(event_ids))
        if not ids:
            return []
        rows = await self._db.fetch_all(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE tenant_id = %s AND id = ANY(%s)",
            (tenant_id, ids),
        )
        return [event_row(r) for r in rows]

    async def list_events(self, tenant_id: TenantId, query: EventQuery) -> list[StoredEvent]:
        where, args = filters(
            tenant_id,
            ("type = %s", query.type),
            ("name_index = %s", query.name_index),
            ("received_at_ms >= %s", query.since_ms),
            ("received_at_ms < %s", query.until_ms),
            ("id < %s", query.after_id),
        )
        rows = await self._db.fetch_all(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE {where} ORDER BY id DESC LIMIT %s",
            (*args, query.limit),
        )
        return [event_row(r) for r in rows]
