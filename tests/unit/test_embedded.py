"""EmbeddedDatabase: group commit keeps each write's outcome its own."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from tests.support import thread_nices
from tidegate import embedded
from tidegate.embedded import EmbeddedDatabase, connect
from tidegate.errors import BackendUnavailable

SCHEMA = "CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, v INTEGER NOT NULL);"


def _insert(key: str, value: int) -> Callable[[sqlite3.Connection], int]:
    def run(conn: sqlite3.Connection) -> int:
        conn.execute("INSERT INTO t (k, v) VALUES (?, ?)", (key, value))
        return value

    return run


def _fail_after_insert(key: str) -> Callable[[sqlite3.Connection], None]:
    def run(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t (k, v) VALUES (?, 0)", (key,))
        raise ValueError("refused after writing")

    return run


def _keys(conn: sqlite3.Connection) -> list[str]:
    return [k for (k,) in conn.execute("SELECT k FROM t ORDER BY k")]


async def test_a_failing_write_in_a_group_undoes_only_itself(tmp_path: Path) -> None:
    db = EmbeddedDatabase(tmp_path / "x.db", SCHEMA)
    try:
        # Submitted together, these commit as one or a few groups; whatever the grouping,
        # each caller sees its own outcome and only the failing writes leave nothing.
        jobs = [db.write(_insert(f"ok-{i:03}", i)) for i in range(200)]
        jobs.insert(50, db.write(_fail_after_insert("bad-1")))
        jobs.insert(120, db.write(_insert("ok-007", 99)))  # duplicate key
        jobs.append(db.write(_fail_after_insert("bad-2")))
        results = await asyncio.gather(*jobs, return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        assert sorted(type(f).__name__ for f in failures) == [
            "BackendUnavailable",  # the duplicate key (a sqlite3 error, reported as such)
            "ValueError",
            "ValueError",
        ]
        assert results.count(7) == 1
        keys = await db.read(_keys)
        assert keys == [f"ok-{i:03}" for i in range(200)]
    finally:
        await db.aclose()


async def test_a_lone_failing_write_leaves_nothing(tmp_path: Path) -> None:
    db = EmbeddedDatabase(tmp_path / "x.db", SCHEMA)
    try:
        with pytest.raises(ValueError, match="refused after writing"):
            await db.write(_fail_after_insert("bad"))
        assert await db.write(_insert("good", 1)) == 1
        assert await db.read(_keys) == ["good"]
    finally:
        await db.aclose()


async def test_writes_after_close_are_refused(tmp_path: Path) -> None:
    db = EmbeddedDatabase(tmp_path / "x.db", SCHEMA)
    await db.aclose()
    with pytest.raises(BackendUnavailable):
        await db.write(_insert("late", 1))


async def test_a_write_waits_for_another_process_lock(tmp_path: Path) -> None:
    """Another connection (as another process would) holds the write lock; the write
    waits for it instead of failing, and lands once the lock is released."""
    db = EmbeddedDatabase(tmp_path / "x.db", SCHEMA)
    other = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO t (k, v) VALUES ('other', 1)")
        write = asyncio.ensure_future(db.write(_insert("mine", 2)))
        await asyncio.sleep(0.2)
        assert not write.done()  # still waiting for the lock
        other.execute("COMMIT")
        assert await asyncio.wait_for(write, 5) == 2
        assert _keys(other) == ["mine", "other"]
    finally:
        other.close()
        await db.aclose()


async def test_a_lock_held_past_the_timeout_fails_the_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tidegate.embedded._LOCK_TIMEOUT_S", 0.2)
    db = EmbeddedDatabase(tmp_path / "x.db", SCHEMA)
    other = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(BackendUnavailable):
            await asyncio.wait_for(db.write(_insert("mine", 2)), 5)
        other.execute("ROLLBACK")
        assert await db.write(_insert("later", 3)) == 3
    finally:
        other.close()
        await db.aclose()


async def test_a_page_size_applies_to_a_new_file_and_an_old_file_keeps_its_own(
    tmp_path: Path,
) -> None:
    old = tmp_path / "old.db"
    await EmbeddedDatabase(old, SCHEMA).aclose()  # made with SQLite's default pages
    for path in (tmp_path / "new.db", old):
        db = EmbeddedDatabase(path, SCHEMA, page_size=32768)
        try:
            await db.write(_insert("k", 1))
            (size,) = await db.read(lambda c: c.execute("PRAGMA page_size").fetchone())
            assert size == (32768 if path.name == "new.db" else 4096)
            assert await db.read(_keys) == ["k"]
        finally:
            await db.aclose()


async def test_the_writer_cache_is_the_size_asked_for(tmp_path: Path) -> None:
    db = EmbeddedDatabase(tmp_path / "x.db", SCHEMA, writer_cache_kib=32 * 1024)
    try:
        # read on the writer's own connection, inside one of its transactions
        assert await db.write(lambda c: c.execute("PRAGMA cache_size").fetchone()[0]) == -32768
        assert await db.read(lambda c: c.execute("PRAGMA cache_size").fetchone()[0]) == -2000
    finally:
        await db.aclose()


def _open_at_once(path: Path, connections: int) -> tuple[list[str], list[sqlite3.Error]]:
    """`connect` to `path` from `connections` threads at the same moment: the journal
    modes they see, and the errors."""
    start = threading.Barrier(connections)
    modes: list[str] = []
    errors: list[sqlite3.Error] = []

    def open_it() -> None:
        start.wait()
        try:
            with closing(connect(path)) as conn:
                modes.append(conn.execute("PRAGMA journal_mode").fetchone()[0])
        except sqlite3.Error as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return modes, errors


def test_connections_opening_a_new_file_at_once_all_get_wal_mode(tmp_path: Path) -> None:
    """Switching a file from rollback mode to WAL takes an exclusive lock SQLite does not
    wait for: four connections at once on a new file were refused now and then (5% of
    runs) until `connect` tried again."""
    for run in range(100):
        path = tmp_path / f"new-{run}.db"
        with closing(sqlite3.connect(path)) as conn:
            conn.executescript(SCHEMA)  # a file in rollback mode, as SQLite makes one
        modes, errors = _open_at_once(path, 4)
        assert errors == [] and modes == ["wal"] * 4, (run, errors, modes)


def _counted(calls: list[str], key: str) -> Callable[[sqlite3.Connection], None]:
    def run(conn: sqlite3.Connection) -> None:
        calls.append(key)
        conn.execute("INSERT INTO t (k, v) VALUES (?, 1)", (key,))

    return run


async def _written_apart(db: EmbeddedDatabase, gap_s: float) -> list[str]:
    """A good write, then `gap_s` later a failing one: the good one runs twice (together,
    rolled back, then on its own) exactly when the two shared a transaction."""
    calls: list[str] = []
    good = asyncio.ensure_future(db.write(_counted(calls, "good")))
    await asyncio.sleep(gap_s)
    with pytest.raises(ValueError, match="refused after writing"):
        await db.write(_fail_after_insert("bad"))
    await good
    assert await db.read(_keys) == ["good"]
    return calls


async def test_a_lingering_writer_lets_a_later_write_share_the_commit(tmp_path: Path) -> None:
    db = EmbeddedDatabase(tmp_path / "x.db", SCHEMA, linger_s=5.0)
    try:
        assert await _written_apart(db, 0.05) == ["good", "good"]
    finally:
        await db.aclose()


async def test_without_linger_a_later_write_commits_on_its_own(tmp_path: Path) -> None:
    db = EmbeddedDatabase(tmp_path / "x.db", SCHEMA)
    try:
        assert await _written_apart(db, 0.05) == ["good"]
    finally:
        await db.aclose()


async def test_a_large_group_commits_without_waiting_out_the_linger(tmp_path: Path) -> None:
    db = EmbeddedDatabase(tmp_path / "x.db", SCHEMA, linger_s=600.0)
    try:
        # Sixteen queued at once: the group is large enough, and commits at once.
        await asyncio.wait_for(
            asyncio.gather(*(db.write(_insert(f"k{i:02}", i)) for i in range(16))), 30
        )
        assert len(await db.read(_keys)) == 16
    finally:
        await db.aclose()


async def test_writes_joining_a_lingering_writer_wake_it_once_the_group_is_large(
    tmp_path: Path,
) -> None:
    db = EmbeddedDatabase(tmp_path / "x.db", SCHEMA, linger_s=600.0)
    try:
        first = asyncio.ensure_future(db.write(_insert("k00", 0)))
        await asyncio.sleep(0.05)  # the writer lingers with it, asleep
        # Fifteen more while it sleeps: sixteen in all, so `write` wakes it.
        later = [db.write(_insert(f"k{i:02}", i)) for i in range(1, 16)]
        await asyncio.wait_for(asyncio.gather(first, *later), 30)
        assert len(await db.read(_keys)) == 16
    finally:
        await db.aclose()


async def test_closing_a_lingering_writer_commits_what_it_holds(tmp_path: Path) -> None:
    db = EmbeddedDatabase(tmp_path / "x.db", SCHEMA, linger_s=600.0)
    pending = asyncio.ensure_future(db.write(_insert("held", 1)))
    await asyncio.sleep(0.05)  # the writer lingers with it
    await asyncio.wait_for(db.aclose(), 30)
    assert await pending == 1
    with closing(connect(tmp_path / "x.db")) as conn:
        assert _keys(conn) == ["held"]


def _nice(thread_id: int) -> int:
    return thread_nices(os.getpid())[thread_id]


async def test_lowered_priority_reaches_the_threads_of_databases_opened_after_it(
    tmp_path: Path,
) -> None:
    base = _nice(threading.get_native_id())
    before = EmbeddedDatabase(tmp_path / "before.db", SCHEMA)
    embedded.lower_thread_priority(3)
    try:
        after = EmbeddedDatabase(tmp_path / "after.db", SCHEMA)
    finally:
        embedded.lower_thread_priority(0)
    unchanged = EmbeddedDatabase(tmp_path / "unchanged.db", SCHEMA)
    try:
        named = {"before": before, "after": after, "unchanged": unchanged}
        readers, writers = {}, {}
        for name, db in named.items():
            await db.write(_insert("k", 1))
            # a reader thread starts with the first read: the read tells its own thread id
            readers[name] = await db.read(lambda _conn: threading.get_native_id())
            writers[name] = db._writer.native_id
        assert {name: _nice(tid) - base for name, tid in writers.items() if tid} == {
            "before": 0,
            "after": 3,
            "unchanged": 0,
        }
        assert {name: _nice(tid) - base for name, tid in readers.items()} == {
            "before": 0,
            "after": 3,
            "unchanged": 0,
        }
        # the thread that asked (it spawns processes, in `serve`) keeps its priority
        assert _nice(threading.get_native_id()) == base
    finally:
        for db in (before, after, unchanged):
            await db.aclose()
