"""The event index on PostgreSQL: routing (dedupe, events, first deliveries), purge, reads."""

from __future__ import annotations

from collections.abc import Sequence

from tidegate.model import Delivery, EventId, TenantId
from tidegate.store.base import EventQuery, RoutedEvent, StoredEvent
from tidegate.store.postgres.database import PostgresDatabase, filters
from tidegate.store.postgres.deliveries import new_delivery
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
        # Set-based: a batch costs the same few statements whatever its size (arrays and
        # unnest), not statements per event. Within a batch the first event of a dedupe
        # key is the candidate, as if they were recorded one at a time.
        candidates: dict[tuple[str, bytes], RoutedEvent] = {}
        for item in events:
            candidates.setdefault((item.meta.tenant_id, item.meta.dedupe_index), item)
        tenants = [t for t, _ in candidates]
        keys = [k for _, k in candidates]
        async with self._db.transaction() as conn:
            await conn.execute(
                "INSERT INTO dedupe (tenant_id, dedupe_index, event_id, expires_at_ms)"
                " SELECT t, k, e, %s FROM unnest(%s::text[], %s::bytea[], %s::text[]) AS u(t, k, e)"
                " ON CONFLICT (tenant_id, dedupe_index) DO UPDATE"
                " SET event_id = excluded.event_id, expires_at_ms = excluded.expires_at_ms"
                " WHERE dedupe.expires_at_ms <= %s",
                (
                    now_ms + dedupe_window_ms,
                    tenants,
                    keys,
                    [item.meta.id for item in candidates.values()],
                    now_ms,
                ),
            )
            cur = await conn.execute(
                "SELECT event_id FROM dedupe WHERE (tenant_id, dedupe_index) IN"
                " (SELECT * FROM unnest(%s::text[], %s::bytea[]))",
                (tenants, keys),
            )
            owners = {row[0] for row in await cur.fetchall()}
            # Events whose key this batch holds; each may still be known (a log re-read
            # after a crash): only the ones inserted now get deliveries.
            kept = [item for item in candidates.values() if item.meta.id in owners]
            if not kept:
                return []
            planned = [
                new_delivery(item.meta.tenant_id, item.meta.id, destination_id, now_ms)
                for item in kept
                for destination_id in item.destination_ids
            ]
            cur = await conn.execute(
                "WITH inserted AS ("
                f" INSERT INTO events ({EVENT_COLUMNS}) SELECT * FROM unnest(%s::text[],"
                " %s::text[], %s::text[], %s::text[], %s::text[], %s::bytea[], %s::bytea[],"
                " %s::bigint[], %s::bytea[]) ON CONFLICT (tenant_id, id) DO NOTHING"
                " RETURNING tenant_id, id)"
                " INSERT INTO deliveries (id, tenant_id, event_id, destination_id, status,"
                " attempts, next_attempt_at_ms, lease_until_ms, created_at_ms, updated_at_ms)"
                " SELECT u.id, u.tenant_id, u.event_id, u.destination_id, 'pending', 0, %s, %s,"
                " %s, %s FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[])"
                " AS u(id, tenant_id, event_id, destination_id)"
                " WHERE (u.tenant_id, u.event_id) IN (SELECT tenant_id, id FROM inserted)"
                " RETURNING id",
                (
                    [i.meta.id for i in kept],
                    [i.meta.tenant_id for i in kept],
                    [i.meta.source_id for i in kept],
                    [i.meta.kind for i in kept],
                    [i.meta.type for i in kept],
                    [i.meta.name_index for i in kept],
                    [i.meta.dedupe_index for i in kept],
                    [i.meta.received_at_ms for i in kept],
                    [i.ciphertext for i in kept],
                    now_ms,
                    now_ms + lease_ms,
                    now_ms,
                    now_ms,
                    [d.id for d in planned],
                    [d.tenant_id for d in planned],
                    [d.event_id for d in planned],
                    [d.destination_id for d in planned],
                ),
            )
            created = {row[0] for row in await cur.fetchall()}
        return [d for d in planned if d.id in created]

    async def purge(self, *, now_ms: int, events_before_ms: int) -> int:
        async with self._db.transaction() as conn:
            expired = await conn.execute(
                "DELETE FROM dedupe WHERE (tenant_id, dedupe_index) IN (SELECT tenant_id,"
                " dedupe_index FROM dedupe WHERE expires_at_ms <= %s LIMIT %s"
                " FOR UPDATE SKIP LOCKED)",
                (now_ms, _PURGE_BATCH),
            )
            # Locked, so a concurrent replay_events (FOR SHARE) waits and then skips them;
            # skipping locked rows lets two workers' housekeeping run side by side.
            cur = await conn.execute(
                "SELECT tenant_id, id FROM events e WHERE received_at_ms < %s AND NOT EXISTS"
                " (SELECT 1 FROM deliveries d WHERE d.tenant_id = e.tenant_id"
                " AND d.event_id = e.id AND d.status = 'pending')"
                " LIMIT %s FOR UPDATE SKIP LOCKED",
                (events_before_ms, _PURGE_BATCH),
            )
            claims = expired.rowcount
            rows = await cur.fetchall()
            if not rows:
                return claims
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
            return len(rows) + claims

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
