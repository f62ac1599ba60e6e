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

While the database is down, operations raise BackendUnavailable (HTTP 503 with
Retry-After); the pool reconnects about a second after it is back, however long the
outage (database.py).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict

from tidegate.errors import ConfigError
from tidegate.store.postgres.audit import PostgresAuditStore
from tidegate.store.postgres.database import URL_VAR, PostgresDatabase
from tidegate.store.postgres.deliveries import PostgresDeliveryStore
from tidegate.store.postgres.destinations import PostgresDestinationStore
from tidegate.store.postgres.events import PostgresEventStore
from tidegate.store.postgres.tenants import PostgresTenantStore
from tidegate.store.postgres.usage import PostgresUsageStore


class PostgresStore:
    """Implements Store: one aggregate store per Protocol, sharing one connection pool."""

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
        self._db = PostgresDatabase(
            conninfo,
            pool_min_size=pool_min_size,
            pool_max_size=pool_max_size,
            pool_timeout_s=pool_timeout_s,
            migrate=migrate,
            connect_kwargs=connect_kwargs or {},
        )
        self._tenants = PostgresTenantStore(self._db)
        self._destinations = PostgresDestinationStore(self._db)
        self._events = PostgresEventStore(self._db)
        self._deliveries = PostgresDeliveryStore(self._db)
        self._usage = PostgresUsageStore(self._db)
        self._audit = PostgresAuditStore(self._db)

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
            raise ConfigError(f"{URL_VAR}: not a valid PostgreSQL URL ({reason})") from exc
        try:
            min_size = int(ours.get("pool_min_size", "1"))
            max_size = int(ours.get("pool_max_size", "10"))
            timeout_s = float(ours.get("pool_timeout_s", "10"))
        except ValueError as exc:
            raise ConfigError(f"{URL_VAR}: pool settings must be numbers ({exc})") from exc
        if min_size < 0 or max_size < max(min_size, 1) or timeout_s <= 0:
            raise ConfigError(
                f"{URL_VAR}: need 0 <= pool_min_size <= pool_max_size, pool_max_size >= 1"
                " and pool_timeout_s > 0"
            )
        migrate = ours.get("migrate", "true").lower()
        if migrate not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            raise ConfigError(f"{URL_VAR}: migrate must be true or false, got {migrate!r}")
        keys = {key for key, _ in libpq}
        return cls(
            conninfo,
            pool_min_size=min_size,
            pool_max_size=max_size,
            pool_timeout_s=timeout_s,
            migrate=migrate in ("true", "1", "yes", "on"),
            connect_kwargs={} if "connect_timeout" in keys else {"connect_timeout": 5},
        )

    @property
    def tenants(self) -> PostgresTenantStore:
        return self._tenants

    @property
    def destinations(self) -> PostgresDestinationStore:
        return self._destinations

    @property
    def events(self) -> PostgresEventStore:
        return self._events

    @property
    def deliveries(self) -> PostgresDeliveryStore:
        return self._deliveries

    @property
    def usage(self) -> PostgresUsageStore:
        return self._usage

    @property
    def audit(self) -> PostgresAuditStore:
        return self._audit

    @property
    def exclusive_worker(self) -> bool:
        return False  # other workers may hold leases: they lapse, never released wholesale

    async def ping(self) -> None:
        async with self._db.transaction() as conn:
            await conn.execute("SELECT 1")

    async def migrate(self) -> tuple[list[int], int]:
        """Apply pending migrations in one transaction; returns (applied, schema version)."""
        return await self._db.migrate()

    async def aclose(self) -> None:
        await self._db.aclose()
