"""The tamper-evident audit chain on PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tidegate.security.audit import GENESIS, AuditEntry, AuditRecord
from tidegate.store.postgres.database import PostgresDatabase, params
from tidegate.store.rows import AUDIT_COLUMNS, audit_record, audit_rows


class PostgresAuditStore:
    """Implements AuditStore on PostgreSQL."""

    def __init__(self, db: PostgresDatabase) -> None:
        self._db = db

    async def append_audit(self, entries: Sequence[AuditEntry]) -> None:
        async with self._db.transaction() as conn:
            # One appender at a time: the chain is a total order.
            await conn.execute("SELECT pg_advisory_xact_lock(7461726967)")
            cur = await conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
            row = await cur.fetchone()
            if row is None:
                cur = await conn.execute("SELECT seq, hash FROM audit_anchor WHERE id = 1")
                row = await cur.fetchone()
            rows = audit_rows((int(row[0]), str(row[1])) if row else None, entries)
            await conn.cursor().executemany(
                f"INSERT INTO audit ({AUDIT_COLUMNS}) VALUES ({params(13)})", rows
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
        rows = await self._db.fetch_all(
            f"SELECT {AUDIT_COLUMNS} FROM audit {clause} ORDER BY seq DESC LIMIT %s",
            [*args, limit],
        )
        return [audit_record(r) for r in rows]

    async def audit_chain(self, *, after_seq: int, limit: int) -> list[AuditRecord]:
        rows = await self._db.fetch_all(
            f"SELECT {AUDIT_COLUMNS} FROM audit WHERE seq > %s ORDER BY seq LIMIT %s",
            (after_seq, limit),
        )
        return [audit_record(r) for r in rows]

    async def audit_anchor(self) -> tuple[int, str]:
        row = await self._db.fetch_one("SELECT seq, hash FROM audit_anchor WHERE id = 1")
        return (int(row[0]), str(row[1])) if row else (0, GENESIS)

    async def purge_audit(self, before_ms: int) -> int:
        async with self._db.transaction() as conn:
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
