"""SqliteStore: the embedded store, one SQLite file (WAL, group commit)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from tidegate.embedded import EmbeddedDatabase, connect, sqlite_path
from tidegate.errors import Conflict
from tidegate.ids import new_delivery_id
from tidegate.model import (
    Attempt,
    AttemptOutcome,
    Delivery,
    DeliveryId,
    DeliveryStatus,
    Destination,
    DestinationId,
    DestinationStatus,
    EventId,
    Source,
    SourceId,
    Tenant,
    TenantId,
)
from tidegate.security.audit import (
    GENESIS,
    AuditEntry,
    AuditRecord,
    AuditStore,
    chain_hash,
)
from tidegate.store.base import (
    AttemptResult,
    DataKey,
    DeliveryQuery,
    DeliveryStore,
    DestinationStore,
    EventQuery,
    EventStore,
    PreviousSecret,
    RoutedEvent,
    StoredEvent,
    TenantStore,
    UsageIncrement,
    UsageRow,
    UsageStore,
)
from tidegate.store.rows import (
    AUDIT_COLUMNS,
    DELIVERY_COLUMNS,
    DESTINATION_COLUMNS,
    DESTINATION_SETTINGS,
    EVENT_COLUMNS,
    SOURCE_BY_KEY_WHERE,
    SOURCE_COLUMNS,
    audit_record,
    audit_values,
    delivery_row,
    destination_row,
    destination_settings,
    destination_values,
    event_row,
    set_clause,
    source_row,
    tenant_row,
)

_PENDING = DeliveryStatus.PENDING.value
_DEAD = DeliveryStatus.DEAD.value

# Columns added to tables after they first shipped. The schema's CREATE TABLE IF NOT
# EXISTS leaves an existing table as it was, so an existing file gets them here, before
# the schema runs (its indexes may name them). PostgreSQL gets them from migrations.
_ADDED_COLUMNS = (
    ("sources", "prev_write_key_hash", "TEXT"),
    ("sources", "prev_key_expires_at_ms", "INTEGER"),
    ("destinations", "prev_secret_ct", "BLOB"),
    ("destinations", "prev_secret_expires_at_ms", "INTEGER"),
    ("destinations", "kind", "TEXT NOT NULL DEFAULT 'webhook'"),
    ("destinations", "config", "TEXT"),
)


def _placeholders(n: int) -> str:
    return ",".join("?" * n)


def _add_columns(path: Path) -> None:
    """Give an existing database file the columns of _ADDED_COLUMNS it lacks (idempotent)."""
    if not path.exists():
        return  # a new file: the schema creates every column
    conn = connect(path)
    try:
        # IMMEDIATE: two processes opening one old file at once add each column once.
        conn.execute("BEGIN IMMEDIATE")
        for table, column, declaration in _ADDED_COLUMNS:
            present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            if present and column not in present:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
        conn.execute("COMMIT")
    finally:
        conn.close()


class SqliteStore:
    """Implements every store Protocol on one embedded database."""

    def __init__(self, path: Path) -> None:
        schema = resources.files("tidegate.store").joinpath("schema_sqlite.sql").read_text()
        _add_columns(path)
        self._db = EmbeddedDatabase(path, schema)

    @classmethod
    def from_url(cls, url: str) -> SqliteStore:
        return cls(sqlite_path(url, "TIDEGATE_STORE_URL"))

    # The Store bundle: this one object serves every aggregate.
    @property
    def tenants(self) -> TenantStore:
        return self

    @property
    def destinations(self) -> DestinationStore:
        return self

    @property
    def events(self) -> EventStore:
        return self

    @property
    def deliveries(self) -> DeliveryStore:
        return self

    @property
    def usage(self) -> UsageStore:
        return self

    @property
    def exclusive_worker(self) -> bool:
        return True

    async def ping(self) -> None:
        await self._db.read(lambda c: c.execute("SELECT 1").fetchone())

    async def aclose(self) -> None:
        await self._db.aclose()

    # -- tenants, sources, keys -------------------------------------------------------

    async def create_tenant(self, tenant: Tenant) -> None:
        await self._db.write(
            lambda c: c.execute(
                "INSERT INTO tenants (id, name, region, created_at_ms) VALUES (?, ?, ?, ?)",
                (tenant.id, tenant.name, tenant.region, tenant.created_at_ms),
            )
        )

    async def get_tenant(self, tenant_id: TenantId) -> Tenant | None:
        row = await self._db.read(
            lambda c: c.execute(
                "SELECT id, name, region, created_at_ms FROM tenants WHERE id = ?", (tenant_id,)
            ).fetchone()
        )
        return tenant_row(row) if row else None

    async def list_tenants(self) -> list[Tenant]:
        rows = await self._db.read(
            lambda c: c.execute(
                "SELECT id, name, region, created_at_ms FROM tenants ORDER BY id"
            ).fetchall()
        )
        return [tenant_row(r) for r in rows]

    async def create_source(self, source: Source, write_key_hash: str) -> None:
        def insert(c: sqlite3.Connection) -> None:
            if not c.execute("SELECT 1 FROM tenants WHERE id = ?", (source.tenant_id,)).fetchone():
                raise Conflict(f"tenant {source.tenant_id} does not exist")
            c.execute(
                "INSERT INTO sources (id, tenant_id, name, write_key_hash, created_at_ms)"
                " VALUES (?, ?, ?, ?, ?)",
                (source.id, source.tenant_id, source.name, write_key_hash, source.created_at_ms),
            )

        await self._db.write(insert)

    async def source_by_key(self, write_key_hash: str) -> Source | None:
        from tidegate.ids import now_ms

        row = await self._db.read(
            lambda c: c.execute(
                f"SELECT {SOURCE_COLUMNS} FROM sources WHERE {SOURCE_BY_KEY_WHERE.format(p='?')}",
                (write_key_hash, write_key_hash, now_ms()),
            ).fetchone()
        )
        return source_row(row) if row else None

    async def list_sources(self, tenant_id: TenantId) -> list[Source]:
        rows = await self._db.read(
            lambda c: c.execute(
                f"SELECT {SOURCE_COLUMNS} FROM sources"
                " WHERE tenant_id = ? AND revoked_at_ms IS NULL ORDER BY id",
                (tenant_id,),
            ).fetchall()
        )
        return [source_row(r) for r in rows]

    async def rotate_write_key(
        self,
        tenant_id: TenantId,
        source_id: SourceId,
        write_key_hash: str,
        *,
        now_ms: int,
        overlap_ms: int,
    ) -> bool:
        keep_previous = overlap_ms > 0
        changed = await self._db.write(
            lambda c: (
                c.execute(
                    "UPDATE sources SET prev_write_key_hash = CASE WHEN ? THEN write_key_hash END,"
                    " prev_key_expires_at_ms = ?, write_key_hash = ?"
                    " WHERE tenant_id = ? AND id = ? AND revoked_at_ms IS NULL",
                    (
                        keep_previous,
                        now_ms + overlap_ms if keep_previous else None,
                        write_key_hash,
                        tenant_id,
                        source_id,
                    ),
                ).rowcount
            )
        )
        return bool(changed)

    async def revoke_source(self, tenant_id: TenantId, source_id: SourceId, *, now_ms: int) -> bool:
        changed = await self._db.write(
            lambda c: (
                c.execute(
                    "UPDATE sources SET revoked_at_ms = ?"
                    " WHERE tenant_id = ? AND id = ? AND revoked_at_ms IS NULL",
                    (now_ms, tenant_id, source_id),
                ).rowcount
            )
        )
        return bool(changed)

    async def create_api_key(self, tenant_id: TenantId, key_hash: str, name: str) -> None:
        from tidegate.ids import now_ms

        def insert(c: sqlite3.Connection) -> None:
            if not c.execute("SELECT 1 FROM tenants WHERE id = ?", (tenant_id,)).fetchone():
                raise Conflict(f"tenant {tenant_id} does not exist")
            c.execute(
                "INSERT INTO api_keys (key_hash, tenant_id, name, created_at_ms)"
                " VALUES (?, ?, ?, ?)",
                (key_hash, tenant_id, name, now_ms()),
            )

        await self._db.write(insert)

    async def tenant_by_api_key(self, key_hash: str) -> TenantId | None:
        row = await self._db.read(
            lambda c: c.execute(
                "SELECT tenant_id FROM api_keys WHERE key_hash = ? AND revoked_at_ms IS NULL",
                (key_hash,),
            ).fetchone()
        )
        return TenantId(row[0]) if row else None

    async def revoke_api_key(self, tenant_id: TenantId, key_hash: str, *, now_ms: int) -> bool:
        changed = await self._db.write(
            lambda c: (
                c.execute(
                    "UPDATE api_keys SET revoked_at_ms = ?"
                    " WHERE tenant_id = ? AND key_hash = ? AND revoked_at_ms IS NULL",
                    (now_ms, tenant_id, key_hash),
                ).rowcount
            )
        )
        return bool(changed)

    async def data_keys(self, tenant_id: TenantId) -> list[DataKey]:
        rows = await self._db.read(
            lambda c: c.execute(
                "SELECT version, wrapped FROM data_keys WHERE tenant_id = ? ORDER BY version",
                (tenant_id,),
            ).fetchall()
        )
        return [DataKey(version=v, wrapped=w) for v, w in rows]

    async def add_data_key(self, tenant_id: TenantId, wrapped: bytes, key_ring_id: str) -> None:
        from tidegate.ids import now_ms

        def insert(c: sqlite3.Connection) -> None:
            (version,) = c.execute(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM data_keys WHERE tenant_id = ?",
                (tenant_id,),
            ).fetchone()
            c.execute(
                "INSERT INTO data_keys (tenant_id, version, wrapped, key_ring_id, created_at_ms)"
                " VALUES (?, ?, ?, ?, ?)",
                (tenant_id, version, wrapped, key_ring_id, now_ms()),
            )

        await self._db.write(insert)

    # -- destinations -------------------------------------------------------------------

    async def create_destination(self, destination: Destination) -> None:
        d = destination

        def insert(c: sqlite3.Connection) -> None:
            if not c.execute("SELECT 1 FROM tenants WHERE id = ?", (d.tenant_id,)).fetchone():
                raise Conflict(f"tenant {d.tenant_id} does not exist")
            c.execute(
                f"INSERT INTO destinations ({DESTINATION_COLUMNS}) VALUES ({_placeholders(15)})",
                destination_values(d),
            )

        await self._db.write(insert)

    async def get_destination(
        self, tenant_id: TenantId, destination_id: DestinationId
    ) -> Destination | None:
        row = await self._db.read(
            lambda c: c.execute(
                f"SELECT {DESTINATION_COLUMNS} FROM destinations WHERE tenant_id = ? AND id = ?",
                (tenant_id, destination_id),
            ).fetchone()
        )
        return destination_row(row) if row else None

    async def list_destinations(self, tenant_id: TenantId) -> list[Destination]:
        rows = await self._db.read(
            lambda c: c.execute(
                f"SELECT {DESTINATION_COLUMNS} FROM destinations WHERE tenant_id = ? ORDER BY id",
                (tenant_id,),
            ).fetchall()
        )
        return [destination_row(r) for r in rows]

    async def enabled_destinations(self, tenant_ids: Sequence[TenantId]) -> list[Destination]:
        ids = list(dict.fromkeys(tenant_ids))
        if not ids:
            return []
        rows = await self._db.read(
            lambda c: c.execute(
                f"SELECT {DESTINATION_COLUMNS} FROM destinations"
                f" WHERE tenant_id IN ({_placeholders(len(ids))}) AND status = 'enabled'"
                " ORDER BY id",
                ids,
            ).fetchall()
        )
        return [destination_row(r) for r in rows]

    async def set_destination_status(
        self,
        tenant_id: TenantId,
        destination_id: DestinationId,
        status: DestinationStatus,
        reason: str | None,
    ) -> None:
        await self._db.write(
            lambda c: c.execute(
                "UPDATE destinations SET status = ?, disabled_reason = ?"
                " WHERE tenant_id = ? AND id = ?",
                (status.value, reason, tenant_id, destination_id),
            )
        )

    async def update_destination(self, destination: Destination) -> bool:
        d = destination
        assignments = set_clause(DESTINATION_SETTINGS, "?")
        changed = await self._db.write(
            lambda c: (
                c.execute(
                    f"UPDATE destinations SET {assignments} WHERE tenant_id = ? AND id = ?",
                    (*destination_settings(d), d.tenant_id, d.id),
                ).rowcount
            )
        )
        return bool(changed)

    async def delete_destination(self, tenant_id: TenantId, destination_id: DestinationId) -> bool:
        changed = await self._db.write(
            lambda c: (
                c.execute(
                    "DELETE FROM destinations WHERE tenant_id = ? AND id = ?",
                    (tenant_id, destination_id),
                ).rowcount
            )
        )
        return bool(changed)

    async def rotate_secret(
        self,
        tenant_id: TenantId,
        destination_id: DestinationId,
        secret_ciphertext: bytes,
        *,
        previous_expires_at_ms: int | None,
    ) -> bool:
        keep_previous = previous_expires_at_ms is not None
        # One statement: the right-hand secret_ct is the value before this update.
        changed = await self._db.write(
            lambda c: (
                c.execute(
                    "UPDATE destinations SET prev_secret_ct = CASE WHEN ? THEN secret_ct END,"
                    " prev_secret_expires_at_ms = ?, secret_ct = ?"
                    " WHERE tenant_id = ? AND id = ?",
                    (
                        keep_previous,
                        previous_expires_at_ms,
                        secret_ciphertext,
                        tenant_id,
                        destination_id,
                    ),
                ).rowcount
            )
        )
        return bool(changed)

    async def previous_secret(
        self, tenant_id: TenantId, destination_id: DestinationId, *, now_ms: int
    ) -> PreviousSecret | None:
        row = await self._db.read(
            lambda c: c.execute(
                "SELECT prev_secret_ct, prev_secret_expires_at_ms FROM destinations"
                " WHERE tenant_id = ? AND id = ? AND prev_secret_ct IS NOT NULL"
                " AND prev_secret_expires_at_ms > ?",
                (tenant_id, destination_id, now_ms),
            ).fetchone()
        )
        return PreviousSecret(ciphertext=row[0], expires_at_ms=row[1]) if row else None

    # -- events -------------------------------------------------------------------------

    async def record_routed(
        self, events: Sequence[RoutedEvent], *, now_ms: int, dedupe_window_ms: int, lease_ms: int
    ) -> list[Delivery]:
        def record(c: sqlite3.Connection) -> list[Delivery]:
            created: list[Delivery] = []
            for item in events:
                m = item.meta
                c.execute(
                    "INSERT INTO dedupe (tenant_id, dedupe_index, event_id, expires_at_ms)"
                    " VALUES (?, ?, ?, ?) ON CONFLICT (tenant_id, dedupe_index) DO UPDATE"
                    " SET event_id = excluded.event_id, expires_at_ms = excluded.expires_at_ms"
                    " WHERE dedupe.expires_at_ms <= ?",
                    (m.tenant_id, m.dedupe_index, m.id, now_ms + dedupe_window_ms, now_ms),
                )
                (owner,) = c.execute(
                    "SELECT event_id FROM dedupe WHERE tenant_id = ? AND dedupe_index = ?",
                    (m.tenant_id, m.dedupe_index),
                ).fetchone()
                if owner != m.id:
                    continue  # a duplicate of an event kept within the window
                inserted = c.execute(
                    "INSERT OR IGNORE INTO events (tenant_id, id, source_id, kind, type,"
                    " name_index, dedupe_index, received_at_ms, ciphertext)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        m.tenant_id,
                        m.id,
                        m.source_id,
                        m.kind,
                        m.type,
                        m.name_index,
                        m.dedupe_index,
                        m.received_at_ms,
                        item.ciphertext,
                    ),
                ).rowcount
                if not inserted:
                    continue  # this very event was recorded before (log replayed after a crash)
                for destination_id in item.destination_ids:
                    delivery = Delivery(
                        id=new_delivery_id(),
                        tenant_id=m.tenant_id,
                        event_id=m.id,
                        destination_id=destination_id,
                        status=DeliveryStatus.PENDING,
                        attempts=0,
                        next_attempt_at_ms=now_ms,
                        created_at_ms=now_ms,
                        updated_at_ms=now_ms,
                    )
                    _insert_delivery(c, delivery, lease_until_ms=now_ms + lease_ms)
                    created.append(delivery)
            return created

        return await self._db.write(record)

    async def purge(self, *, now_ms: int, events_before_ms: int) -> int:
        def purge(c: sqlite3.Connection) -> int:
            c.execute("DELETE FROM dedupe WHERE expires_at_ms <= ?", (now_ms,))
            doomed = (
                "SELECT tenant_id, id FROM events e WHERE received_at_ms < ? AND NOT EXISTS"
                " (SELECT 1 FROM deliveries d WHERE d.tenant_id = e.tenant_id"
                " AND d.event_id = e.id AND d.status = 'pending') LIMIT 10000"
            )
            rows = c.execute(doomed, (events_before_ms,)).fetchall()
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
            return len(rows)

        return await self._db.write(purge)

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
                f" WHERE tenant_id = ? AND id IN ({_placeholders(len(ids))})",
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
        sql = (
            f"SELECT {EVENT_COLUMNS} FROM events WHERE {' AND '.join(where)}"
            " ORDER BY id DESC LIMIT ?"
        )
        rows = await self._db.read(lambda c: c.execute(sql, [*args, query.limit]).fetchall())
        return [event_row(r) for r in rows]

    # -- deliveries ---------------------------------------------------------------------

    async def claim_due(self, *, now_ms: int, lease_ms: int, limit: int) -> list[Delivery]:
        def claim(c: sqlite3.Connection) -> list[Delivery]:
            rows = c.execute(
                f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE status = 'pending'"
                " AND next_attempt_at_ms <= ? AND (lease_until_ms IS NULL OR lease_until_ms < ?)"
                " ORDER BY next_attempt_at_ms LIMIT ?",
                (now_ms, now_ms, limit),
            ).fetchall()
            if rows:
                c.executemany(
                    "UPDATE deliveries SET lease_until_ms = ? WHERE id = ?",
                    [(now_ms + lease_ms, r[0]) for r in rows],
                )
            return [delivery_row(r) for r in rows]

        return await self._db.write(claim)

    async def next_due_ms(self) -> int | None:
        """When the earliest pending delivery falls due (the scheduler's alarm)."""
        row = await self._db.read(
            lambda c: c.execute(
                "SELECT MIN(MAX(next_attempt_at_ms, COALESCE(lease_until_ms, 0)))"
                " FROM deliveries WHERE status = 'pending'"
            ).fetchone()
        )
        return int(row[0]) if row and row[0] is not None else None

    async def record_attempts(self, results: Sequence[AttemptResult], *, now_ms: int) -> None:
        def record(c: sqlite3.Connection) -> None:
            c.executemany(
                "INSERT INTO attempts (id, delivery_id, tenant_id, started_at_ms, duration_ms,"
                " outcome, status_code, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        r.attempt.id,
                        r.attempt.delivery_id,
                        r.attempt.tenant_id,
                        r.attempt.started_at_ms,
                        r.attempt.duration_ms,
                        r.attempt.outcome.value,
                        r.attempt.status_code,
                        r.attempt.error,
                    )
                    for r in results
                ],
            )
            c.executemany(
                "UPDATE deliveries SET status = ?, attempts = attempts + 1,"
                " next_attempt_at_ms = ?, lease_until_ms = NULL, updated_at_ms = ?,"
                " last_error = ? WHERE id = ? AND tenant_id = ?",
                [
                    (
                        r.delivery_status,
                        r.next_attempt_at_ms,
                        now_ms,
                        r.last_error,
                        r.attempt.delivery_id,
                        r.attempt.tenant_id,
                    )
                    for r in results
                ],
            )

        await self._db.write(record)

    async def defer(self, delivery_ids: Sequence[DeliveryId], until_ms: int) -> None:
        await self._db.write(
            lambda c: c.executemany(
                "UPDATE deliveries SET next_attempt_at_ms = ?, lease_until_ms = NULL"
                " WHERE id = ? AND status = 'pending'",
                [(until_ms, d) for d in delivery_ids],
            )
        )

    async def release_leases(self, delivery_ids: Sequence[DeliveryId]) -> None:
        await self._db.write(
            lambda c: c.executemany(
                "UPDATE deliveries SET lease_until_ms = NULL WHERE id = ?",
                [(d,) for d in delivery_ids],
            )
        )

    async def resume_destination(
        self, tenant_id: TenantId, destination_id: DestinationId, *, now_ms: int
    ) -> int:
        return await self._db.write(
            lambda c: (
                c.execute(
                    "UPDATE deliveries SET next_attempt_at_ms = ? WHERE tenant_id = ?"
                    " AND destination_id = ? AND status = 'pending' AND next_attempt_at_ms > ?",
                    (now_ms, tenant_id, destination_id, now_ms),
                ).rowcount
            )
        )

    async def release_all_leases(self) -> int:
        return await self._db.write(
            lambda c: (
                c.execute(
                    "UPDATE deliveries SET lease_until_ms = NULL"
                    " WHERE status = 'pending' AND lease_until_ms IS NOT NULL"
                ).rowcount
            )
        )

    async def get_delivery(self, tenant_id: TenantId, delivery_id: DeliveryId) -> Delivery | None:
        row = await self._db.read(
            lambda c: c.execute(
                f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE tenant_id = ? AND id = ?",
                (tenant_id, delivery_id),
            ).fetchone()
        )
        return delivery_row(row) if row else None

    async def list_deliveries(self, tenant_id: TenantId, query: DeliveryQuery) -> list[Delivery]:
        where = ["tenant_id = ?"]
        args: list[Any] = [tenant_id]
        for column, value in (
            ("event_id", query.event_id),
            ("destination_id", query.destination_id),
            ("status", query.status),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if query.after_id is not None:
            where.append("id < ?")
            args.append(query.after_id)
        sql = (
            f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE {' AND '.join(where)}"
            " ORDER BY id DESC LIMIT ?"
        )
        rows = await self._db.read(lambda c: c.execute(sql, [*args, query.limit]).fetchall())
        return [delivery_row(r) for r in rows]

    async def list_attempts(
        self, tenant_id: TenantId, delivery_ids: Sequence[DeliveryId]
    ) -> list[Attempt]:
        ids = list(dict.fromkeys(delivery_ids))
        if not ids:
            return []
        rows = await self._db.read(
            lambda c: c.execute(
                "SELECT id, delivery_id, tenant_id, started_at_ms, duration_ms, outcome,"
                " status_code, error FROM attempts"
                f" WHERE tenant_id = ? AND delivery_id IN ({_placeholders(len(ids))}) ORDER BY id",
                [tenant_id, *ids],
            ).fetchall()
        )
        return [
            Attempt(
                id=r[0],
                delivery_id=DeliveryId(r[1]),
                tenant_id=TenantId(r[2]),
                started_at_ms=r[3],
                duration_ms=r[4],
                outcome=AttemptOutcome(r[5]),
                status_code=r[6],
                error=r[7],
            )
            for r in rows
        ]

    async def dead_letter_pending(
        self, tenant_id: TenantId, destination_id: DestinationId, reason: str, *, now_ms: int
    ) -> int:
        return await self._db.write(
            lambda c: (
                c.execute(
                    "UPDATE deliveries SET status = 'dead', next_attempt_at_ms = NULL,"
                    " lease_until_ms = NULL, last_error = ?, updated_at_ms = ?"
                    " WHERE tenant_id = ? AND destination_id = ? AND status = 'pending'",
                    (reason, now_ms, tenant_id, destination_id),
                ).rowcount
            )
        )

    async def replay_dead_letters(
        self, tenant_id: TenantId, destination_id: DestinationId, *, now_ms: int
    ) -> int:
        return await self._db.write(
            lambda c: (
                c.execute(
                    "UPDATE deliveries SET status = 'pending', next_attempt_at_ms = ?,"
                    " lease_until_ms = NULL, attempts = 0, updated_at_ms = ?"
                    " WHERE tenant_id = ? AND destination_id = ? AND status = 'dead'",
                    (now_ms, now_ms, tenant_id, destination_id),
                ).rowcount
            )
        )

    async def replay_events(
        self,
        tenant_id: TenantId,
        *,
        event_ids: Sequence[EventId] | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        destination_ids: Sequence[DestinationId],
        now_ms: int,
    ) -> int:
        where = ["tenant_id = ?"]
        args: list[Any] = [tenant_id]
        if event_ids is not None:
            where.append(f"id IN ({_placeholders(len(event_ids))})")
            args.extend(event_ids)
        if since_ms is not None:
            where.append("received_at_ms >= ?")
            args.append(since_ms)
        if until_ms is not None:
            where.append("received_at_ms < ?")
            args.append(until_ms)

        def replay(c: sqlite3.Connection) -> int:
            ids = [
                r[0]
                for r in c.execute(
                    f"SELECT id FROM events WHERE {' AND '.join(where)} ORDER BY id", args
                )
            ]
            count = 0
            for event_id in ids:
                for destination_id in destination_ids:
                    _insert_delivery(
                        c,
                        Delivery(
                            id=new_delivery_id(),
                            tenant_id=tenant_id,
                            event_id=EventId(event_id),
                            destination_id=destination_id,
                            status=DeliveryStatus.PENDING,
                            attempts=0,
                            next_attempt_at_ms=now_ms,
                            created_at_ms=now_ms,
                            updated_at_ms=now_ms,
                            replay_of=None,
                        ),
                        lease_until_ms=None,
                    )
                    count += 1
            return count

        return await self._db.write(replay)

    # -- audit ------------------------------------------------------------------------

    @property
    def audit(self) -> AuditStore:
        return self

    async def append_audit(self, entries: Sequence[AuditEntry]) -> None:
        def append(c: sqlite3.Connection) -> None:
            row = c.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
            if row is None:
                row = c.execute("SELECT seq, hash FROM audit_anchor WHERE id = 1").fetchone()
            seq, prev = row if row else (0, GENESIS)
            rows = []
            for entry in entries:
                seq += 1
                digest = chain_hash(prev, seq, entry)
                rows.append((seq, *audit_values(entry), prev, digest))
                prev = digest
            c.executemany(f"INSERT INTO audit ({AUDIT_COLUMNS}) VALUES ({_placeholders(13)})", rows)

        await self._db.write(append)

    async def list_audit(
        self, tenant_id: str | None, *, after_seq: int | None, limit: int
    ) -> list[AuditRecord]:
        where: list[str] = []
        args: list[object] = []
        if tenant_id is not None:
            where.append("tenant_id = ?")
            args.append(tenant_id)
        if after_seq is not None:
            where.append("seq < ?")
            args.append(after_seq)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = await self._db.read(
            lambda c: c.execute(
                f"SELECT {AUDIT_COLUMNS} FROM audit {clause} ORDER BY seq DESC LIMIT ?",
                [*args, limit],
            ).fetchall()
        )
        return [audit_record(r) for r in rows]

    async def audit_chain(self, *, after_seq: int, limit: int) -> list[AuditRecord]:
        rows = await self._db.read(
            lambda c: c.execute(
                f"SELECT {AUDIT_COLUMNS} FROM audit WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        )
        return [audit_record(r) for r in rows]

    async def audit_anchor(self) -> tuple[int, str]:
        row = await self._db.read(
            lambda c: c.execute("SELECT seq, hash FROM audit_anchor WHERE id = 1").fetchone()
        )
        return (int(row[0]), str(row[1])) if row else (0, GENESIS)

    async def purge_audit(self, before_ms: int) -> int:
        def purge(c: sqlite3.Connection) -> int:
            last = c.execute(
                "SELECT seq, hash FROM audit WHERE at_ms < ? ORDER BY seq DESC LIMIT 1",
                (before_ms,),
            ).fetchone()
            if last is None:
                return 0
            c.execute(
                "INSERT INTO audit_anchor (id, seq, hash) VALUES (1, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
                last,
            )
            return c.execute("DELETE FROM audit WHERE seq <= ?", (last[0],)).rowcount

        return await self._db.write(purge)

    # -- usage --------------------------------------------------------------------------

    async def add_usage(self, increments: Sequence[UsageIncrement]) -> None:
        if not increments:
            return
        await self._db.write(
            lambda c: c.executemany(
                "INSERT INTO usage (tenant_id, hour_ms, meter, value) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (tenant_id, hour_ms, meter) DO UPDATE"
                " SET value = value + excluded.value",
                [(i.tenant_id, i.hour_ms, i.meter, i.value) for i in increments],
            )
        )

    async def usage_report(
        self, tenant_id: TenantId, *, since_ms: int | None, until_ms: int | None
    ) -> list[UsageRow]:
        rows = await self._db.read(
            lambda c: c.execute(
                "SELECT tenant_id, hour_ms, meter, value FROM usage WHERE tenant_id = ?"
                " AND hour_ms >= ? AND hour_ms < ? ORDER BY hour_ms, meter",
                (tenant_id, since_ms or 0, until_ms or 2**62),
            ).fetchall()
        )
        return [UsageRow(TenantId(r[0]), r[1], r[2], r[3]) for r in rows]


def _insert_delivery(c: sqlite3.Connection, d: Delivery, *, lease_until_ms: int | None) -> None:
    c.execute(
        "INSERT INTO deliveries (id, tenant_id, event_id, destination_id, status, attempts,"
        " next_attempt_at_ms, lease_until_ms, created_at_ms, updated_at_ms, replay_of)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            d.id,
            d.tenant_id,
            d.event_id,
            d.destination_id,
            d.status.value,
            d.attempts,
            d.next_attempt_at_ms,
            lease_until_ms,
            d.created_at_ms,
            d.updated_at_ms,
            d.replay_of,
        ),
    )
