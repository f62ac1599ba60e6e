"""The embedded audit chain's own file (`store.audit.db`): a store file written before it
existed, or by a release rolled back to, has its chain copied there when the store opens
(left in place for that release), and the chain still verifies.

The older layout is made as the older release made it: the chain in the store file's
`audit` and `audit_anchor` tables (the same tables as the audit file's; the current
schema no longer creates them in the store file).
"""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from pathlib import Path

from tidegate.embedded import connect
from tidegate.ids import now_ms
from tidegate.security.audit import AuditEntry, verify
from tidegate.store.rows import AUDIT_COLUMNS
from tidegate.store.sqlite.audit import SCHEMA, audit_path, copy_from_store
from tidegate.store.sqlite.store import SqliteStore


def _entry(action: str) -> AuditEntry:
    return AuditEntry(
        at_ms=now_ms(),
        tenant_id="ten_a",
        actor="alice",
        client_id=None,
        source_ip="127.0.0.1",
        action=action,
        resource=None,
        outcome="success",
        request_id=None,
    )


_CHAIN = f"SELECT {AUDIT_COLUMNS} FROM audit ORDER BY seq"  # noqa: S608
_INSERT = f"INSERT INTO audit ({AUDIT_COLUMNS}) VALUES ({','.join('?' * 13)})"  # noqa: S608


def _rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql).fetchall()


def _as_older_release(store: Path) -> list[tuple[object, ...]]:
    """Move the audit file's chain back into the store file, as an older release kept it,
    and remove the audit file: the chain's rows, as they were."""
    chain = _rows(audit_path(store), _CHAIN)
    anchor = _rows(audit_path(store), "SELECT id, seq, hash FROM audit_anchor")
    with closing(sqlite3.connect(store)) as conn, conn:
        conn.executescript(SCHEMA)
        conn.executemany(_INSERT, chain)
        conn.executemany("INSERT INTO audit_anchor (id, seq, hash) VALUES (?, ?, ?)", anchor)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{audit_path(store)}{suffix}").unlink(missing_ok=True)
    return chain


async def test_an_older_store_files_chain_is_copied_to_the_audit_file_and_still_verifies(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.db"
    store = SqliteStore(path)
    await store.audit.append_audit([_entry("events.list"), _entry("events.get")])
    await store.audit.append_audit([_entry("destinations.create")])
    # Purged once: the chain then starts at an anchor, which must move with it.
    assert await store.audit.purge_audit(now_ms() + 1) == 3
    await store.audit.append_audit([_entry("events.list"), _entry("usage.get")])
    await store.aclose()
    chain = _as_older_release(path)
    assert [row[0] for row in chain] == [4, 5]

    store = SqliteStore(path)
    try:
        assert _rows(audit_path(path), _CHAIN) == chain  # as they were: seq, hashes and all
        result = await verify(store.audit)
        assert result.ok and result.checked == 2, result
        await store.audit.append_audit([_entry("events.list")])
        assert (await verify(store.audit)).ok
        listed = await store.audit.list_audit("ten_a", after_seq=None, limit=9)
        assert [r.seq for r in listed] == [6, 5, 4]
    finally:
        await store.aclose()
    # The store file keeps its chain for an older release; a later open copies nothing again.
    assert _rows(path, _CHAIN) == chain
    assert copy_from_store(path, audit_path(path)) == 0
    # Purged: the copies in the store file go too, and what stays there still verifies
    # from its anchor, for an older release.
    store = SqliteStore(path)
    try:
        assert await store.audit.purge_audit(now_ms() + 1) == 3
        assert _rows(path, "SELECT COUNT(*) FROM audit") == [(0,)]
        assert _rows(path, "SELECT seq, hash FROM audit_anchor") == [chain[-1][::12]]
    finally:
        await store.aclose()


async def test_rows_an_older_release_wrote_after_this_one_are_appended_to_the_chain(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.db"
    store = SqliteStore(path)
    await store.audit.append_audit([_entry("events.list")])
    await store.aclose()
    # Rolled back: the older release starts its own chain in the store file.
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.executescript(SCHEMA)
        conn.execute(
            f"INSERT INTO audit ({AUDIT_COLUMNS}) VALUES"  # noqa: S608
            " (1, 5, 'ten_a', 'bob', NULL, NULL, 'events.get', NULL, 'success', NULL, NULL,"
            " 'genesis', 'h1'),"
            " (2, 6, 'ten_a', 'bob', NULL, NULL, 'usage.get', NULL, 'success', NULL, NULL,"
            " 'h1', 'h2')"
        )

    store = SqliteStore(path)
    try:
        records = await store.audit.audit_chain(after_seq=0, limit=10)
        assert [(r.seq, r.entry.actor, r.entry.action, r.entry.at_ms) for r in records[1:]] == [
            (2, "bob", "events.get", 5),
            (3, "bob", "usage.get", 6),
        ]
        assert (await verify(store.audit)).ok
    finally:
        await store.aclose()
    assert copy_from_store(path, audit_path(path)) == 0  # each row is copied once


async def test_two_processes_opening_at_once_copy_each_row_once(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = SqliteStore(path)
    await store.audit.append_audit([_entry("events.list"), _entry("events.get")])
    await store.aclose()
    chain = _as_older_release(path)
    with closing(connect(audit_path(path))) as conn:
        conn.executescript(SCHEMA)  # as open_audit makes it before copying (in WAL mode)

    copied = await asyncio.gather(
        *(asyncio.to_thread(copy_from_store, path, audit_path(path)) for _ in range(4))
    )
    assert sorted(copied) == [0, 0, 0, 2]
    assert _rows(audit_path(path), _CHAIN) == chain
