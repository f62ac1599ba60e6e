"""The tamper-evident audit chain on SQLite."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from tidegate.embedded import EmbeddedDatabase
from tidegate.security.audit import GENESIS, AuditEntry, AuditRecord, chain_hash
from tidegate.store.rows import AUDIT_COLUMNS, audit_record, audit_values
from tidegate.store.sqlite.database import placeholders


class SqliteAuditStore:
    """Implements AuditStore on the embedded database."""

    def __init__(self, db: EmbeddedDatabase) -> None:
        self._db = db

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
            c.executemany(f"INSERT INTO audit ({AUDIT_COLUMNS}) VALUES ({placeholders(13)})", rows)

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
