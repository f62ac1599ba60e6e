"""The tamper-evident audit chain on SQLite, in a file of its own: `store.audit.db`.

An API read is answered only once its audit record is committed. In the store file that
commit waited for SQLite's write lock behind process 0's routing and delivery
transactions (each with its fsync). In its own file it waits only for other audit
records: under 1,200 events/s, reads' p95 went from 17.1-23.6 ms to 12.7-17.6 (7.7-10.3
with no audit write at all; docs/benchmarks.md, eleventh session).

Files written before kept the chain in the store file's `audit` and `audit_anchor`
tables. Opening the store copies their rows here (`copy_from_store`) and leaves them
there, so a release rolled back to, or still running on the file, finds its chain as it
left it; rows it adds later are copied at the next open. `purge_audit` purges the copied
rows of the store file too.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from tidegate.embedded import EmbeddedDatabase, connect
from tidegate.security.audit import GENESIS, AuditEntry, AuditRecord
from tidegate.store.rows import AUDIT_COLUMNS, audit_record, audit_rows
from tidegate.store.sqlite.database import placeholders

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq        INTEGER PRIMARY KEY,
    at_ms      INTEGER NOT NULL,
    tenant_id  TEXT,
    actor      TEXT NOT NULL,
    client_id  TEXT,
    source_ip  TEXT,
    action     TEXT NOT NULL,
    resource   TEXT,
    outcome    TEXT NOT NULL,
    request_id TEXT,
    detail     TEXT,
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_tenant ON audit (tenant_id, seq);
CREATE INDEX IF NOT EXISTS audit_time ON audit (at_ms);
CREATE TABLE IF NOT EXISTS audit_anchor (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    hash TEXT NOT NULL
);
-- The last seq of the store file's own chain copied here (copy_from_store).
CREATE TABLE IF NOT EXISTS audit_taken (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL
);
"""


def audit_path(store: Path) -> Path:
    """`store.audit.db` next to `store.db`."""
    return store.with_name(f"{store.stem}.audit{store.suffix or '.db'}")


def open_audit(store: Path) -> EmbeddedDatabase:
    """The audit file of the store file `store`, holding any chain the store file held."""
    path = audit_path(store)
    db = EmbeddedDatabase(path, SCHEMA, readers=1)
    copy_from_store(store, path)
    return db


def copy_from_store(store: Path, path: Path) -> int:
    """Copy into the audit file `path` the audit rows of the store file `store` that it
    has not taken yet (all, the first time; later, those a release rolled back to wrote
    there); how many. The store file is only read: a release still running on it sees
    its chain as it left it.

    Into an empty audit file they go as they are, anchor included, so the chain verifies
    as it did. Into one with a chain of its own they are appended to it: re-chained, in
    their order, their times and contents kept. `audit_taken` records the store file's
    last row taken, in the same transaction, under the audit file's write lock, so two
    processes opening at once copy each row once, and a crash copies none or all."""
    target = connect(path)  # made by open_audit: an EmbeddedDatabase runs SCHEMA
    try:
        target.execute("BEGIN IMMEDIATE")
        try:
            taken = target.execute("SELECT seq FROM audit_taken WHERE id = 1").fetchone()
            after = int(taken[0]) if taken else 0
            rows, anchor = _store_chain(store, after)
            if rows and _tip(target) is None and taken is None:
                if anchor is not None:
                    target.execute(
                        "INSERT INTO audit_anchor (id, seq, hash) VALUES (1, ?, ?)", anchor
                    )
                target.executemany(
                    f"INSERT INTO audit ({AUDIT_COLUMNS}) VALUES ({placeholders(13)})", rows
                )
            elif rows:
                _append(target, [audit_record(r).entry for r in rows])
            if rows:
                target.execute(
                    "INSERT INTO audit_taken (id, seq) VALUES (1, ?)"
                    " ON CONFLICT (id) DO UPDATE SET seq = excluded.seq",
                    (rows[-1][0],),
                )
            target.execute("COMMIT")
        except BaseException:
            if target.in_transaction:
                target.execute("ROLLBACK")
            raise
        return len(rows)
    finally:
        target.close()


def _store_chain(
    store: Path, after: int
) -> tuple[list[tuple[object, ...]], tuple[object, ...] | None]:
    """The store file's audit rows after seq `after`, in order, and its anchor."""
    if not store.exists():
        return [], None
    source = connect(store)
    try:
        source.execute("BEGIN")
        try:
            rows = source.execute(
                f"SELECT {AUDIT_COLUMNS} FROM audit WHERE seq > ? ORDER BY seq",
                (after,),
            ).fetchall()
            anchor = source.execute("SELECT seq, hash FROM audit_anchor WHERE id = 1").fetchone()
        except sqlite3.OperationalError:  # no audit tables: a file made since, or long before
            return [], None
        finally:
            source.execute("ROLLBACK")
        return rows, anchor
    finally:
        source.close()


def _tip(c: sqlite3.Connection) -> tuple[int, str] | None:
    """The chain's last (seq, hash): its newest record, else its anchor, else None."""
    row = c.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    if row is None:
        row = c.execute("SELECT seq, hash FROM audit_anchor WHERE id = 1").fetchone()
    return (int(row[0]), str(row[1])) if row else None


def _append(c: sqlite3.Connection, entries: Sequence[AuditEntry]) -> None:
    rows = audit_rows(_tip(c), entries)
    c.executemany(f"INSERT INTO audit ({AUDIT_COLUMNS}) VALUES ({placeholders(13)})", rows)


def _purge(c: sqlite3.Connection, before_ms: int, up_to_seq: int | None) -> int:
    """Delete the chain's records older than `before_ms` (and at most up to `up_to_seq`),
    keeping the last one's hash as the anchor the rest verifies from."""
    bound, args = (
        ("AND seq <= ?", (before_ms, up_to_seq)) if up_to_seq is not None else ("", (before_ms,))
    )
    last = c.execute(
        f"SELECT seq, hash FROM audit WHERE at_ms < ? {bound} ORDER BY seq DESC LIMIT 1",
        args,
    ).fetchone()
    if last is None:
        return 0
    c.execute(
        "INSERT INTO audit_anchor (id, seq, hash) VALUES (1, ?, ?)"
        " ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
        last,
    )
    return int(c.execute("DELETE FROM audit WHERE seq <= ?", (last[0],)).rowcount)


class SqliteAuditStore:
    """Implements AuditStore on the audit file (`open_audit`); `store_db`, the store file,
    for purging the rows copied from it."""

    def __init__(self, db: EmbeddedDatabase, store_db: EmbeddedDatabase) -> None:
        self._db = db
        self._store_db = store_db

    async def append_audit(self, entries: Sequence[AuditEntry]) -> None:
        await self._db.write(lambda c: _append(c, entries))

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
        purged: int = await self._db.write(lambda c: _purge(c, before_ms, None))
        taken = await self._db.read(
            lambda c: c.execute("SELECT seq FROM audit_taken WHERE id = 1").fetchone()
        )
        if taken is not None:  # the store file's copies of them, where they came from
            await self._store_db.write(lambda c: _purge(c, before_ms, int(taken[0])))
        return purged
