"""The PostgreSQL store's shared core: the connection pool, transactions and migrations.

Every aggregate store borrows a connection for one explicit transaction through
`PostgresDatabase.transaction()`, which turns driver errors into ours.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from tidegate.errors import BackendUnavailable, Conflict, TidegateError
from tidegate.model import TenantId
from tidegate.store.migrations import load_migrations, pending

Connection = psycopg.AsyncConnection[tuple[Any, ...]]

URL_VAR = "TIDEGATE_STORE_URL"
# pg_advisory_xact_lock key serialising migrations ("tidegate" in ASCII).
_MIGRATION_LOCK = 0x7469646567617465
# psycopg_pool retries a failed connect with exponential backoff (1 s, 2 s, 4 s, ...)
# until `reconnect_timeout` (5 min by default), and while that attempt is pending it
# starts no other: after a long outage the pool noticed the database was back only at
# its next attempt, up to half a minute later. Giving up after 2 s keeps the attempts
# at most ~1 s apart, and the next request for a connection starts a fresh attempt at
# once, so the store recovers about a second after the database does.
_RECONNECT_TIMEOUT_S = 2.0


class PostgresDatabase:
    """One pool of connections to one database, opened and migrated on first use."""

    def __init__(
        self,
        conninfo: str,
        *,
        pool_min_size: int,
        pool_max_size: int,
        pool_timeout_s: float,
        migrate: bool,
        connect_kwargs: dict[str, Any],
    ) -> None:
        self._conninfo = conninfo
        self._pool_min_size = pool_min_size
        self._pool_max_size = pool_max_size
        self._pool_timeout_s = pool_timeout_s
        self._connect_kwargs: dict[str, Any] = {
            **connect_kwargs,
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

    async def aclose(self) -> None:
        self._is_closed = True
        if self._pool is not None:
            await self._pool.close()

    @asynccontextmanager
    async def transaction(self, *, check_schema: bool = True) -> AsyncIterator[Connection]:
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

    # -- one-statement transactions -------------------------------------------------------

    async def fetch_one(self, sql: str, args: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        async with self.transaction() as conn:
            cur = await conn.execute(sql, args)
            return await cur.fetchone()

    async def fetch_all(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        async with self.transaction() as conn:
            cur = await conn.execute(sql, args)
            return await cur.fetchall()

    async def write(self, sql: str, args: Sequence[Any] = ()) -> int:
        """Run one statement; returns how many rows it changed."""
        async with self.transaction() as conn:
            cur = await conn.execute(sql, args)
            return cur.rowcount

    # -- the pool and the schema ------------------------------------------------------------

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
                        reconnect_timeout=_RECONNECT_TIMEOUT_S,
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
                        f"the PostgreSQL schema lacks migrations {missing} and {URL_VAR}"
                        " has migrate=false: run `tidegate migrate`"
                    )
            self._is_ready = True

    async def _schema_versions(self) -> set[int]:
        async with self.transaction(check_schema=False) as conn:
            cur = await conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
            if not await scalar(cur):
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
        async with self.transaction(check_schema=False) as conn:
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


async def require_tenant(conn: Connection, tenant_id: TenantId) -> None:
    """Raise Conflict unless the tenant exists (inside the caller's transaction)."""
    cur = await conn.execute("SELECT 1 FROM tenants WHERE id = %s", (tenant_id,))
    if await cur.fetchone() is None:
        raise Conflict(f"tenant {tenant_id} does not exist")


def params(n: int) -> str:
    return ", ".join(["%s"] * n)


def filters(tenant_id: TenantId, *optional: tuple[str, object]) -> tuple[str, list[Any]]:
    """`tenant_id = %s` and every condition whose value is given, for a WHERE clause."""
    where: list[str] = ["tenant_id = %s"]
    args: list[Any] = [tenant_id]
    for condition, value in optional:
        if value is not None:
            where.append(condition)
            args.append(value)
    return " AND ".join(where), args


async def scalar(cur: psycopg.AsyncCursor[tuple[Any, ...]]) -> Any:
    row = await cur.fetchone()
    return row[0] if row else None
