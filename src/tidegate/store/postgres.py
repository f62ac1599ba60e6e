"""PostgresStore: the production store on PostgreSQL (psycopg 3, an async pool).

Fit for PgBouncer (transaction pooling) and RDS Proxy: no server-side prepared
statements, no session state (no SET, no session advisory locks, no temp tables),
and every operation is one explicit transaction on a connection borrowed for just
that transaction. Several processes may share the database: claims use
`FOR UPDATE SKIP LOCKED`, so workers never lease the same delivery twice.

URL: `postgresql://user@host:port/db?sslmode=verify-full&sslrootcert=...`. Every
query parameter goes to libpq unchanged, except Tidegate's own: `pool_min_size`
(default 1), `pool_max_size` (10), `pool_timeout_s` (10: how long a caller waits for
a connection before BackendUnavailable) and `migrate` (true: apply pending
migrations on first use; false: refuse to run on an older schema, as when a
deployment job runs `tidegate migrate`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool

from tidegate.errors import BackendUnavailable, ConfigError, Conflict, TidegateError
from tidegate.ids import new_delivery_id
from tidegate.ids import now_ms as clock_ms
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

# The column lists and row mappers are engine-neutral; they live with the first engine.
from tidegate.security.audit import GENESIS, AuditEntry, AuditRecord, AuditStore, chain_hash
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
from tidegate.store.migrations import load_migrations, pending
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

Connection = psycopg.AsyncConnection[tuple[Any, ...]]

# pg_advisory_xact_lock key serialising migrations ("tidegate" in ASCII).
_MIGRATION_LOCK = 0x7469646567617465
_PURGE_BATCH = 10_000
_URL_VAR = "TIDEGATE_STORE_URL"


class PostgresStore:
    """Implements every store Protocol on one PostgreSQL database."""

    def __init__(
        self,
        conninfo: str,
        *,
        pool_min_size: int = 1,
        pool_max_size: int = 10,
        pool_timeout_s: float = 10.0,
        migrate: bool = True,
        connect_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self._conninfo = conninfo
        self._pool_min_size = pool_min_size
        self._pool_max_size = pool_max_size
        self._pool_timeout_s = pool_timeout_s
        self._connect_kwargs: dict[str, Any] = {
            **(connect_kwargs or {}),
            "prepare_threshold": None,  # no named prepared statements: PgBouncer, RDS Proxy
            "autocommit": False,
        }
        self._migrate = migrate
        self._pool: AsyncConnectionPool[Connection] | None = None
        # The pool opens (and the schema is checked) on first use, inside the running loop:
        # open_store() is synchronous.
        self._pool_lock = asyncio.Lock()
        self._schema_lock = asyncio.Lock()
        self._is_ready = False
        self._is_closed = False

    @classmethod
    def from_url(cls, url: str) -> PostgresStore:
        parts = urlsplit(url)
        ours: dict[str, str] = {}
        libpq: list[tuple[str, str]] = []
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key in ("pool_min_size", "pool_max_size", "pool_timeout_s", "migrate"):
                ours[key] = value
            else:
                libpq.append((key, value))
        conninfo = urlunsplit(parts._replace(scheme="postgresql", query=urlencode(libpq)))
        try:
            conninfo_to_dict(conninfo)  # a misspelt libpq parameter fails here, not at first use
        except psycopg.ProgrammingError as exc:
            reason = str(exc).strip()
            raise ConfigError(f"{_URL_VAR}: not a valid PostgreSQL URL ({reason})") from exc
        try:
            min_size = int(ours.get("pool_min_size", "1"))
            max_size = int(ours.get("pool_max_size", "10"))
            timeout_s = float(ours.get("pool_timeout_s", "10"))
        except ValueError as exc:
            raise ConfigError(f"{_URL_VAR}: pool settings must be numbers ({exc})") from exc
        if min_size < 0 or max_size < max(min_size, 1) or timeout_s <= 0:
            raise ConfigError(
                f"{_URL_VAR}: need 0 <= pool_min_size <= pool_max_size, pool_max_size >= 1"
                " and pool_timeout_s > 0"
            )
        migrate = ours.get("migrate", "true").lower()
        if migrate not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            raise ConfigError(f"{_URL_VAR}: migrate must be true or false, got {migrate!r}")
        keys = {key for key, _ in libpq}
        return cls(
            conninfo,
            pool_min_size=min_size,
            pool_max_size=max_size,
            pool_timeout_s=timeout_s,
            migrate=migrate in ("true", "1", "yes", "on"),
            connect_kwargs={} if "connect_timeout" in keys else {"connect_timeout": 5},
        )

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
        return False  # other workers may hold leases: they lapse, never released wholesale

    async def ping(self) -> None:
        async with self._tx() as conn:
            await conn.execute("SELECT 1")

    async def aclose(self) -> None:
        self._is_closed = True
        if self._pool is not None:
            await self._pool.close()

    # -- connections, transactions, migrations ------------------------------------------

    @asynccontextmanager
    async def _tx(self, *, check_schema: bool = True) -> AsyncIterator[Connection]:
        """One transaction on a pooled connection; driver errors leave as ours."""
        if self._is_closed:
            raise BackendUnavailable("the PostgreSQL store is closed")
        if check_schema and not self._is_ready:
            await self._ensure_schema()
        try:
            pool = await self._open_pool()
            async with pool.connection() as conn, conn.transaction():
                yield conn
        except psycopg.IntegrityError as exc:
            raise Conflict(f"PostgreSQL refused the write: {exc}") from exc
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise BackendUnavailable(f"PostgreSQL is unavailable: {exc}") from exc
        except psycopg.Error as exc:
            raise TidegateError(f"PostgreSQL query failed: {exc}") from exc

    async def _open_pool(self) -> AsyncConnectionPool[Connection]:
        if self._pool is None:
            async with self._pool_lock:
                if self._pool is None:
                    pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
                        self._conninfo,
                        kwargs=self._connect_kwargs,
                        min_size=self._pool_min_size,
                        max_size=self._pool_max_size,
                        timeout=self._pool_timeout_s,
                        name="tidegate-store",
                        open=False,
                    )
                    await pool.open()
                    self._pool = pool
        return self._pool

    async def _ensure_schema(self) -> None:
        async with self._schema_lock:
            if self._is_ready:
                return
            if self._migrate:
                await self.migrate()
            else:
                applied = await self._schema_versions()
                missing = [m.version for m in pending(load_migrations("postgres"), applied)]
                if missing:
                    raise BackendUnavailable(
                        f"the PostgreSQL schema lacks migrations {missing} and {_URL_VAR}"
                        " has migrate=false: run `tidegate migrate`"
                    )
            self._is_ready = True

    async def _schema_versions(self) -> set[int]:
        async with self._tx(check_schema=False) as conn:
            cur = await conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
            if not await _scalar(cur):
                return set()
            cur = await conn.execute("SELECT version FROM schema_migrations")
            return {row[0] for row in await cur.fetchall()}

    async def migrate(self) -> tuple[list[int], int]:
        """Apply pending migrations in one transaction; returns (applied, schema version).

        The transaction-scoped advisory lock makes concurrent migrators queue: the
        second finds the work done. It is released by the commit, so it survives
        transaction pooling.
        """
        migrations = load_migrations("postgres")
        async with self._tx(check_schema=False) as conn:
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
                " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            cur = await conn.execute("SELECT version FROM schema_migrations")
            done = {row[0] for row in await cur.fetchall()}
            todo = pending(migrations, done)
            for migration in todo:
                await conn.execute(migration.sql.encode())  # bytes: several statements, no params
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                    (migration.version, migration.name),
                )
        applied = [m.version for m in todo]
        return applied, max(done | set(applied), default=0)

    async def _require_tenant(self, conn: Connection, tenant_id: TenantId) -> None:
        cur = await conn.execute("SELECT 1 FROM tenants WHERE id = %s", (tenant_id,))
        if await cur.fetchone() is None:
            raise Conflict(f"tenant {tenant_id} does not exist")

    # -- tenants, sources, keys -------------------------------------------------------

    async def create_tenant(self, tenant: Tenant) -> None:
        async with self._tx() as conn:
            await conn.execute(
                "INSERT INTO tenants (id, name, region, created_at_ms) VALUES (%s, %s, %s, %s)",
                (tenant.id, tenant.name, tenant.region, tenant.created_at_ms),
            )

    async def get_tenant(self, tenant_id: TenantId) -> Tenant | None:
        row = await self._one(
            "SELECT id, name, region, created_at_ms FROM tenants WHERE id = %s", (tenant_id,)
        )
        return tenant_row(row) if row else None

    async def list_tenants(self) -> list[Tenant]:
        rows = await self._all("SELECT id, name, region, created_at_ms FROM tenants ORDER BY id")
        return [tenant_row(r) for r in rows]

    async def create_source(self, source: Source, write_key_hash: str) -> None:
        async with self._tx() as conn:
            await self._require_tenant(conn, source.tenant_id)
            await conn.execute(
                "INSERT INTO sources (id, tenant_id, name, write_key_hash, created_at_ms)"
                " VALUES (%s, %s, %s, %s, %s)",
                (source.id, source.tenant_id, source.name, write_key_hash, source.created_at_ms),
            )

    async def source_by_key(self, write_key_hash: str) -> Source | None:
        row = await self._one(
            f"SELECT {SOURCE_COLUMNS} FROM sources WHERE {SOURCE_BY_KEY_WHERE.format(p='%s')}",
            (write_key_hash, write_key_hash, clock_ms()),
        )
        return source_row(row) if row else None

    async def list_sources(self, tenant_id: TenantId) -> list[Source]:
        rows = await self._all(
            f"SELECT {SOURCE_COLUMNS} FROM sources"
            " WHERE tenant_id = %s AND revoked_at_ms IS NULL ORDER BY id",
            (tenant_id,),
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
        changed = await self._write(
            "UPDATE sources SET prev_write_key_hash = CASE WHEN %s THEN write_key_hash END,"
            " prev_key_expires_at_ms = %s, write_key_hash = %s"
            " WHERE tenant_id = %s AND id = %s AND revoked_at_ms IS NULL",
            (
                keep_previous,
                now_ms + overlap_ms if keep_previous else None,
                write_key_hash,
                tenant_id,
                source_id,
            ),
        )
        return bool(changed)

    async def revoke_source(self, tenant_id: TenantId, source_id: SourceId, *, now_ms: int) -> bool:
        changed = await self._write(
            "UPDATE sources SET revoked_at_ms = %s"
            " WHERE tenant_id = %s AND id = %s AND revoked_at_ms IS NULL",
            (now_ms, tenant_id, source_id),
        )
        return bool(changed)

    async def create_api_key(self, tenant_id: TenantId, key_hash: str, name: str) -> None:
        async with self._tx() as conn:
            await self._require_tenant(conn, tenant_id)
            await conn.execute(
                "INSERT INTO api_keys (key_hash, tenant_id, name, created_at_ms)"
                " VALUES (%s, %s, %s, %s)",
                (key_hash, tenant_id, name, clock_ms()),
            )

    async def tenant_by_api_key(self, key_hash: str) -> TenantId | None:
        row = await self._one(
            "SELECT tenant_id FROM api_keys WHERE key_hash = %s AND revoked_at_ms IS NULL",
            (key_hash,),
        )
        return TenantId(row[0]) if row else None

    async def revoke_api_key(self, tenant_id: TenantId, key_hash: str, *, now_ms: int) -> bool:
        changed = await self._write(
            "UPDATE api_keys SET revoked_at_ms = %s"
            " WHERE tenant_id = %s AND key_hash = %s AND revoked_at_ms IS NULL",
            (now_ms, tenant_id, key_hash),
        )
        return bool(changed)

    async def data_keys(self, tenant_id: TenantId) -> list[DataKey]:
        rows = await self._all(
            "SELECT version, wrapped FROM data_keys WHERE tenant_id = %s ORDER BY version",
            (tenant_id,),
        )
        return [DataKey(version=v, wrapped=w) for v, w in rows]

    async def add_data_key(self, tenant_id: TenantId, wrapped: bytes, key_ring_id: str) -> None:
        # One statement: two processes adding at once compute the same version; the
        # later insert is ignored, as the DataKeyStore contract says.
        async with self._tx() as conn:
            await conn.execute(
                "INSERT INTO data_keys (tenant_id, version, wrapped, key_ring_id, created_at_ms)"
                " SELECT %s, COALESCE(MAX(version), 0) + 1, %s, %s, %s"
                " FROM data_keys WHERE tenant_id = %s"
                " ON CONFLICT (tenant_id, version) DO NOTHING",
                (tenant_id, wrapped, key_ring_id, clock_ms(), tenant_id),
            )

    # -- destinations -------------------------------------------------------------------

    async def create_destination(self, destination: Destination) -> None:
        d = destination
        async with self._tx() as conn:
            await self._require_tenant(conn, d.tenant_id)
            await conn.execute(
                f"INSERT INTO destinations ({DESTINATION_COLUMNS}) VALUES ({_params(15)})",
                destination_values(d),
            )

    async def get_destination(
        self, tenant_id: TenantId, destination_id: DestinationId
    ) -> Destination | None:
        row = await self._one(
            f"SELECT {DESTINATION_COLUMNS} FROM destinations WHERE tenant_id = %s AND id = %s",
            (tenant_id, destination_id),
        )
        return destination_row(row) if row else None

    async def list_destinations(self, tenant_id: TenantId) -> list[Destination]:
        rows = await self._all(
            f"SELECT {DESTINATION_COLUMNS} FROM destinations WHERE tenant_id = %s ORDER BY id",
            (tenant_id,),
        )
        return [destination_row(r) for r in rows]

    async def enabled_destinations(self, tenant_ids: Sequence[TenantId]) -> list[Destination]:
        ids = list(dict.fromkeys(tenant_ids))
        if not ids:
            return []
        rows = await self._all(
            f"SELECT {DESTINATION_COLUMNS} FROM destinations"
            " WHERE tenant_id = ANY(%s) AND status = 'enabled' ORDER BY id",
            (ids,),
        )
        return [destination_row(r) for r in rows]

    async def set_destination_status(
        self,
        tenant_id: TenantId,
        destination_id: DestinationId,
        status: DestinationStatus,
        reason: str | None,
    ) -> None:
        await self._write(
            "UPDATE destinations SET status = %s, disabled_reason = %s"
            " WHERE tenant_id = %s AND id = %s",
            (status.value, reason, tenant_id, destination_id),
        )

    async def update_destination(self, destination: Destination) -> bool:
        d = destination
        changed = await self._write(
            f"UPDATE destinations SET {set_clause(DESTINATION_SETTINGS, '%s')}"
            " WHERE tenant_id = %s AND id = %s",
            (*destination_settings(d), d.tenant_id, d.id),
        )
        return bool(changed)

    async def delete_destination(self, tenant_id: TenantId, destination_id: DestinationId) -> bool:
        changed = await self._write(
            "DELETE FROM destinations WHERE tenant_id = %s AND id = %s",
            (tenant_id, destination_id),
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
        # One statement: the right-hand secret_ct is the value before this update.
        changed = await self._write(
            "UPDATE destinations SET prev_secret_ct = CASE WHEN %s THEN secret_ct END,"
            " prev_secret_expires_at_ms = %s, secret_ct = %s"
            " WHERE tenant_id = %s AND id = %s",
            (
                previous_expires_at_ms is not None,
                previous_expires_at_ms,
                secret_ciphertext,
                tenant_id,
                destination_id,
            ),
        )
        return bool(changed)

    async def previous_secret(
        self, tenant_id: TenantId, destination_id: DestinationId, *, now_ms: int
    ) -> PreviousSecret | None:
        row = await self._one(
            "SELECT prev_secret_ct, prev_secret_expires_at_ms FROM destinations"
            " WHERE tenant_id = %s AND id = %s AND prev_secret_ct IS NOT NULL"
            " AND prev_secret_expires_at_ms > %s",
            (tenant_id, destination_id, now_ms),
        )
        return PreviousSecret(ciphertext=row[0], expires_at_ms=row[1]) if row else None

    # -- events -------------------------------------------------------------------------

    async def record_routed(
        self, events: Sequence[RoutedEvent], *, now_ms: int, dedupe_window_ms: int, lease_ms: int
    ) -> list[Delivery]:
        if not events:
            return []
        created: list[Delivery] = []
        # Pipelined: each phase sends every statement, then reads every answer, so a batch
        # costs three round trips, not three per event. Statements still run in order, so
        # a batch holding two events with one dedupe key keeps the first, as one at a time.
        async with self._tx() as conn, conn.pipeline():
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
                if await _scalar(owner) != item.meta.id:
                    continue  # a duplicate of an event kept within the window
                m = item.meta
                inserts.append(
                    (
                        item,
                        await conn.execute(
                            f"INSERT INTO events ({EVENT_COLUMNS}) VALUES ({_params(9)})"
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
                    _new_delivery(item.meta.tenant_id, item.meta.id, destination_id, now_ms)
                    for destination_id in item.destination_ids
                )
            await _insert_deliveries(conn, created, lease_until_ms=now_ms + lease_ms)
        return created

    async def purge(self, *, now_ms: int, events_before_ms: int) -> int:
        async with self._tx() as conn:
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
        row = await self._one(
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
        rows = await self._all(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE tenant_id = %s AND id = ANY(%s)",
            (tenant_id, ids),
        )
        return [event_row(r) for r in rows]

    async def list_events(self, tenant_id: TenantId, query: EventQuery) -> list[StoredEvent]:
        where, args = _filters(
            tenant_id,
            ("type = %s", query.type),
            ("name_index = %s", query.name_index),
            ("received_at_ms >= %s", query.since_ms),
            ("received_at_ms < %s", query.until_ms),
            ("id < %s", query.after_id),
        )
        rows = await self._all(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE {where} ORDER BY id DESC LIMIT %s",
            (*args, query.limit),
        )
        return [event_row(r) for r in rows]

    # -- deliveries ---------------------------------------------------------------------

    async def claim_due(self, *, now_ms: int, lease_ms: int, limit: int) -> list[Delivery]:
        async with self._tx() as conn:
            # SKIP LOCKED: a delivery another worker is claiming right now is its, not ours.
            cur = await conn.execute(
                f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE status = 'pending'"
                " AND next_attempt_at_ms <= %s"
                " AND (lease_until_ms IS NULL OR lease_until_ms < %s)"
                " ORDER BY next_attempt_at_ms LIMIT %s FOR UPDATE SKIP LOCKED",
                (now_ms, now_ms, limit),
            )
            rows = await cur.fetchall()
            if rows:
                await conn.execute(
                    "UPDATE deliveries SET lease_until_ms = %s WHERE id = ANY(%s)",
                    (now_ms + lease_ms, [r[0] for r in rows]),
                )
        return [delivery_row(r) for r in rows]

    async def next_due_ms(self) -> int | None:
        """When the earliest pending delivery falls due (the scheduler's alarm)."""
        row = await self._one(
            "SELECT MIN(GREATEST(next_attempt_at_ms, COALESCE(lease_until_ms, 0)))"
            " FROM deliveries WHERE status = 'pending'"
        )
        return int(row[0]) if row and row[0] is not None else None

    async def record_attempts(self, results: Sequence[AttemptResult], *, now_ms: int) -> None:
        if not results:
            return
        # In delivery-id order, so two transactions lock shared rows in the same order.
        ordered = sorted(results, key=lambda r: r.attempt.delivery_id)
        async with self._tx() as conn:
            cur = conn.cursor()
            await cur.executemany(
                "INSERT INTO attempts (id, delivery_id, tenant_id, started_at_ms, duration_ms,"
                " outcome, status_code, error) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
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
                    for r in ordered
                ],
            )
            await cur.executemany(
                "UPDATE deliveries SET status = %s, attempts = attempts + 1,"
                " next_attempt_at_ms = %s, lease_until_ms = NULL, updated_at_ms = %s,"
                " last_error = %s WHERE id = %s AND tenant_id = %s",
                [
                    (
                        r.delivery_status,
                        r.next_attempt_at_ms,
                        now_ms,
                        r.last_error,
                        r.attempt.delivery_id,
                        r.attempt.tenant_id,
                    )
                    for r in ordered
                ],
            )

    async def defer(self, delivery_ids: Sequence[DeliveryId], until_ms: int) -> None:
        if delivery_ids:
            await self._write(
                "UPDATE deliveries SET next_attempt_at_ms = %s, lease_until_ms = NULL"
                " WHERE id = ANY(%s) AND status = 'pending'",
                (until_ms, sorted(delivery_ids)),
            )

    async def release_leases(self, delivery_ids: Sequence[DeliveryId]) -> None:
        if delivery_ids:
            await self._write(
                "UPDATE deliveries SET lease_until_ms = NULL WHERE id = ANY(%s)",
                (sorted(delivery_ids),),
            )

    async def resume_destination(
        self, tenant_id: TenantId, destination_id: DestinationId, *, now_ms: int
    ) -> int:
        return await self._write(
            "UPDATE deliveries SET next_attempt_at_ms = %s WHERE tenant_id = %s"
            " AND destination_id = %s AND status = 'pending' AND next_attempt_at_ms > %s",
            (now_ms, tenant_id, destination_id, now_ms),
        )

    async def release_all_leases(self) -> int:
        return await self._write(
            "UPDATE deliveries SET lease_until_ms = NULL"
            " WHERE status = 'pending' AND lease_until_ms IS NOT NULL"
        )

    async def get_delivery(self, tenant_id: TenantId, delivery_id: DeliveryId) -> Delivery | None:
        row = await self._one(
            f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE tenant_id = %s AND id = %s",
            (tenant_id, delivery_id),
        )
        return delivery_row(row) if row else None

    async def list_deliveries(self, tenant_id: TenantId, query: DeliveryQuery) -> list[Delivery]:
        where, args = _filters(
            tenant_id,
            ("event_id = %s", query.event_id),
            ("destination_id = %s", query.destination_id),
            ("status = %s", query.status),
            ("id < %s", query.after_id),
        )
        rows = await self._all(
            f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE {where} ORDER BY id DESC LIMIT %s",
            (*args, query.limit),
        )
        return [delivery_row(r) for r in rows]

    async def list_attempts(
        self, tenant_id: TenantId, delivery_ids: Sequence[DeliveryId]
    ) -> list[Attempt]:
        ids = list(dict.fromkeys(delivery_ids))
        if not ids:
            return []
        rows = await self._all(
            "SELECT id, delivery_id, tenant_id, started_at_ms, duration_ms, outcome,"
            " status_code, error FROM attempts"
            " WHERE tenant_id = %s AND delivery_id = ANY(%s) ORDER BY id",
            (tenant_id, ids),
        )
        return [_attempt(r) for r in rows]

    async def dead_letter_pending(
        self, tenant_id: TenantId, destination_id: DestinationId, reason: str, *, now_ms: int
    ) -> int:
        return await self._write(
            "UPDATE deliveries SET status = 'dead', next_attempt_at_ms = NULL,"
            " lease_until_ms = NULL, last_error = %s, updated_at_ms = %s"
            " WHERE tenant_id = %s AND destination_id = %s AND status = 'pending'",
            (reason, now_ms, tenant_id, destination_id),
        )

    async def replay_dead_letters(
        self, tenant_id: TenantId, destination_id: DestinationId, *, now_ms: int
    ) -> int:
        return await self._write(
            "UPDATE deliveries SET status = 'pending', next_attempt_at_ms = %s,"
            " lease_until_ms = NULL, attempts = 0, updated_at_ms = %s"
            " WHERE tenant_id = %s AND destination_id = %s AND status = 'dead'",
            (now_ms, now_ms, tenant_id, destination_id),
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
        where, args = _filters(
            tenant_id,
            ("id = ANY(%s)", None if event_ids is None else list(event_ids)),
            ("received_at_ms >= %s", since_ms),
            ("received_at_ms < %s", until_ms),
        )
        async with self._tx() as conn:
            # FOR SHARE: an event that purge is deleting right now is skipped, not replayed.
            cur = await conn.execute(
                f"SELECT id FROM events WHERE {where} ORDER BY id FOR SHARE", args
            )
            created = [
                _new_delivery(tenant_id, EventId(event_id), destination_id, now_ms)
                for (event_id,) in await cur.fetchall()
                for destination_id in destination_ids
            ]
            await _insert_deliveries(conn, created, lease_until_ms=None)
        return len(created)

    # -- usage --------------------------------------------------------------------------

    async def add_usage(self, increments: Sequence[UsageIncrement]) -> None:
        if not increments:
            return
        # In key order, so concurrent flushes lock the same rows in the same order.
        rows = sorted((i.tenant_id, i.hour_ms, i.meter, i.value) for i in increments)
        async with self._tx() as conn:
            await conn.cursor().executemany(
                "INSERT INTO usage (tenant_id, hour_ms, meter, value) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (tenant_id, hour_ms, meter) DO UPDATE"
                " SET value = usage.value + excluded.value",
                rows,
            )

    async def usage_report(
        self, tenant_id: TenantId, *, since_ms: int | None, until_ms: int | None
    ) -> list[UsageRow]:
        rows = await self._all(
            "SELECT tenant_id, hour_ms, meter, value FROM usage WHERE tenant_id = %s"
            " AND hour_ms >= %s AND hour_ms < %s ORDER BY hour_ms, meter",
            (tenant_id, since_ms or 0, until_ms or 2**62),
        )
        return [UsageRow(TenantId(r[0]), r[1], r[2], r[3]) for r in rows]

    # -- audit ------------------------------------------------------------------------

    @property
    def audit(self) -> AuditStore:
        return self

    async def append_audit(self, entries: Sequence[AuditEntry]) -> None:
        async with self._tx() as conn:
            # One appender at a time: the chain is a total order.
            await conn.execute("SELECT pg_advisory_xact_lock(7461726967)")
            cur = await conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
            row = await cur.fetchone()
            if row is None:
                cur = await conn.execute("SELECT seq, hash FROM audit_anchor WHERE id = 1")
                row = await cur.fetchone()
            seq, prev = (int(row[0]), str(row[1])) if row else (0, GENESIS)
            rows = []
            for entry in entries:
                seq += 1
                digest = chain_hash(prev, seq, entry)
                rows.append((seq, *audit_values(entry), prev, digest))
                prev = digest
            await conn.cursor().executemany(
                f"INSERT INTO audit ({AUDIT_COLUMNS}) VALUES ({_params(13)})", rows
            )

    async def list_audit(
        self, tenant_id: str | None, *, after_seq: int | None, limit: int
    ) -> list[AuditRecord]:
        where: list[str] = []
        args: list[Any] = []
        if tenant_id is not None:
            where.append("tenant_id = %s")
            args.append(tenant_id)
        if after_seq is not None:
            where.append("seq < %s")
            args.append(after_seq)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = await self._all(
            f"SELECT {AUDIT_COLUMNS} FROM audit {clause} ORDER BY seq DESC LIMIT %s",
            [*args, limit],
        )
        return [audit_record(r) for r in rows]

    async def audit_chain(self, *, after_seq: int, limit: int) -> list[AuditRecord]:
        rows = await self._all(
            f"SELECT {AUDIT_COLUMNS} FROM audit WHERE seq > %s ORDER BY seq LIMIT %s",
            (after_seq, limit),
        )
        return [audit_record(r) for r in rows]

    async def audit_anchor(self) -> tuple[int, str]:
        row = await self._one("SELECT seq, hash FROM audit_anchor WHERE id = 1")
        return (int(row[0]), str(row[1])) if row else (0, GENESIS)

    async def purge_audit(self, before_ms: int) -> int:
        async with self._tx() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock(7461726967)")
            cur = await conn.execute(
                "SELECT seq, hash FROM audit WHERE at_ms < %s ORDER BY seq DESC LIMIT 1",
                (before_ms,),
            )
            last = await cur.fetchone()
            if last is None:
                return 0
            await conn.execute(
                "INSERT INTO audit_anchor (id, seq, hash) VALUES (1, %s, %s)"
                " ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
                last,
            )
            cur = await conn.execute("DELETE FROM audit WHERE seq <= %s", (last[0],))
            return cur.rowcount

    # -- one-statement transactions -------------------------------------------------------

    async def _one(self, sql: str, args: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        async with self._tx() as conn:
            cur = await conn.execute(sql, args)
            return await cur.fetchone()

    async def _all(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        async with self._tx() as conn:
            cur = await conn.execute(sql, args)
            return await cur.fetchall()

    async def _write(self, sql: str, args: Sequence[Any] = ()) -> int:
        """Run one statement; returns how many rows it changed."""
        async with self._tx() as conn:
            cur = await conn.execute(sql, args)
            return cur.rowcount


def _params(n: int) -> str:
    return ", ".join(["%s"] * n)


def _filters(tenant_id: TenantId, *optional: tuple[str, object]) -> tuple[str, list[Any]]:
    """`tenant_id = %s` and every condition whose value is given, for a WHERE clause."""
    where: list[str] = ["tenant_id = %s"]
    args: list[Any] = [tenant_id]
    for condition, value in optional:
        if value is not None:
            where.append(condition)
            args.append(value)
    return " AND ".join(where), args


async def _scalar(cur: psycopg.AsyncCursor[tuple[Any, ...]]) -> Any:
    row = await cur.fetchone()
    return row[0] if row else None


def _new_delivery(
    tenant_id: TenantId, event_id: EventId, destination_id: DestinationId, now_ms: int
) -> Delivery:
    return Delivery(
        id=new_delivery_id(),
        tenant_id=tenant_id,
        event_id=event_id,
        destination_id=destination_id,
        status=DeliveryStatus.PENDING,
        attempts=0,
        next_attempt_at_ms=now_ms,
        created_at_ms=now_ms,
        updated_at_ms=now_ms,
    )


async def _insert_deliveries(
    conn: Connection, deliveries: Sequence[Delivery], *, lease_until_ms: int | None
) -> None:
    if not deliveries:
        return
    await conn.cursor().executemany(
        "INSERT INTO deliveries (id, tenant_id, event_id, destination_id, status, attempts,"
        " next_attempt_at_ms, lease_until_ms, created_at_ms, updated_at_ms, replay_of)"
        f" VALUES ({_params(11)})",
        [
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
            )
            for d in deliveries
        ],
    )


def _attempt(row: Sequence[Any]) -> Attempt:
    return Attempt(
        id=row[0],
        delivery_id=DeliveryId(row[1]),
        tenant_id=TenantId(row[2]),
        started_at_ms=row[3],
        duration_ms=row[4],
        outcome=AttemptOutcome(row[5]),
        status_code=row[6],
        error=row[7],
    )
