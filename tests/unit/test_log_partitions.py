"""The embedded log's partitions: one file per appending process (`serve --processes`).

Each SqliteEventLog here stands for one process: they share nothing but the files.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import pytest

from tidegate.eventlog import Batch, Record
from tidegate.eventlog.sqlite import PAGE_SIZE, SqliteEventLog, partition_path


def _values(batch: Batch) -> list[tuple[int, bytes]]:
    return [(r.partition, r.value) for r in batch.records]


async def _take(iterator: AsyncIterator[Batch], count: int) -> list[tuple[int, bytes]]:
    """Records from `iterator` until `count` have come."""
    seen: list[tuple[int, bytes]] = []
    while len(seen) < count:
        seen += _values(await asyncio.wait_for(iterator.__anext__(), 5))
    return seen


def _kept(path: Path) -> list[bytes]:
    with closing(sqlite3.connect(path)) as conn:
        return [v for (v,) in conn.execute("SELECT value FROM records ORDER BY pos")]


async def test_the_consumer_reads_every_partition_and_notices_other_processes(
    tmp_path: Path,
) -> None:
    main = tmp_path / "log.db"
    first = SqliteEventLog(main, partition=0, processes=2)
    second = SqliteEventLog(main, partition=1, processes=2)
    try:
        consumer = first.consume("t", "router").__aiter__()
        await first.append("t", [Record("k", b"a1")])
        assert await _take(consumer, 1) == [(0, b"a1")]
        # An append in the other process sets no event here: the consumer must look.
        loop = asyncio.get_running_loop()
        started = loop.time()
        await second.append("t", [Record("k", b"b1"), Record("k", b"b2")])
        assert await _take(consumer, 2) == [(1, b"b1"), (1, b"b2")]
        assert loop.time() - started < 0.5
        assert partition_path(main, 1).name == "log-1.db"
        assert _kept(partition_path(main, 1)) == [b"b1", b"b2"]
        assert _kept(main) == [b"a1"]
    finally:
        await first.aclose()
        await second.aclose()


async def test_offsets_are_kept_per_partition_across_a_restart(tmp_path: Path) -> None:
    main = tmp_path / "log.db"
    first = SqliteEventLog(main, partition=0, processes=2)
    second = SqliteEventLog(main, partition=1, processes=2)
    await first.append("t", [Record("k", b"a1"), Record("k", b"a2")])
    await second.append("t", [Record("k", b"b1"), Record("k", b"b2")])
    consumer = first.consume("t", "router", max_records=1).__aiter__()
    batches = [await asyncio.wait_for(consumer.__anext__(), 5) for _ in range(3)]
    # One record per batch: the partition read first rotates, so a1, b1, a2.
    assert [_values(b) for b in batches] == [[(0, b"a1")], [(1, b"b1")], [(0, b"a2")]]
    # One commit naming both partitions (as the router's committer merges them).
    merged = Batch("t", "router", batches[0].records + batches[1].records)
    await first.commit(merged)
    await first.aclose()
    await second.aclose()

    restarted = SqliteEventLog(main, partition=0, processes=2)
    try:
        again = restarted.consume("t", "router").__aiter__()
        assert sorted(await _take(again, 2)) == [(0, b"a2"), (1, b"b2")]
    finally:
        await restarted.aclose()


async def test_each_process_trims_its_own_partition_and_process_0_the_orphans(
    tmp_path: Path,
) -> None:
    """An earlier run had 3 processes; this one has 2. Partition 2's records are still
    consumed, and process 0 trims them; partition 1 is trimmed by its own process only."""
    main = tmp_path / "log.db"
    earlier = SqliteEventLog(main, partition=2, processes=3)
    await earlier.append("t", [Record("k", b"c1"), Record("k", b"c2")])
    await earlier.aclose()

    first = SqliteEventLog(main, partition=0, processes=2)
    second = SqliteEventLog(main, partition=1, processes=2)
    try:
        await first.append("t", [Record("k", b"a1"), Record("k", b"a2")])
        await second.append("t", [Record("k", b"b1"), Record("k", b"b2")])
        consumer = first.consume("t", "router").__aiter__()
        seen: list[tuple[int, bytes]] = []
        while len(seen) < 6:
            batch = await asyncio.wait_for(consumer.__anext__(), 5)
            seen += _values(batch)
            await first.commit(batch)
        assert sorted(seen) == [
            (0, b"a1"),
            (0, b"a2"),
            (1, b"b1"),
            (1, b"b2"),
            (2, b"c1"),
            (2, b"c2"),
        ]

        assert await first.trim("t") == 2  # a1 and c1: the newest of each partition stays
        assert _kept(main) == [b"a2"]
        assert _kept(partition_path(main, 2)) == [b"c2"]
        assert _kept(partition_path(main, 1)) == [b"b1", b"b2"]  # its process's to trim
        assert await second.trim("t") == 1
        assert _kept(partition_path(main, 1)) == [b"b2"]
    finally:
        await first.aclose()
        await second.aclose()


async def test_offsets_of_the_layout_before_partitions_carry_over(tmp_path: Path) -> None:
    main = tmp_path / "log.db"
    with closing(sqlite3.connect(main)) as conn:
        conn.executescript(
            """
            CREATE TABLE records (topic TEXT NOT NULL, pos INTEGER NOT NULL, key TEXT NOT NULL,
                value BLOB NOT NULL, PRIMARY KEY (topic, pos)) WITHOUT ROWID;
            CREATE TABLE group_offsets (grp TEXT NOT NULL, topic TEXT NOT NULL,
                committed INTEGER NOT NULL, PRIMARY KEY (grp, topic)) WITHOUT ROWID;
            INSERT INTO records VALUES ('t', 0, 'k', x'30'), ('t', 1, 'k', x'31');
            INSERT INTO group_offsets VALUES ('router', 't', 0);
            """
        )
    log = SqliteEventLog(main)
    try:
        consumer = log.consume("t", "router").__aiter__()
        assert await _take(consumer, 1) == [(0, b"1")]
    finally:
        await log.aclose()
    with closing(sqlite3.connect(main)) as conn:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    assert "group_offsets" not in tables


def test_a_partition_outside_the_processes_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="partition 2 is not one of 2 processes"):
        SqliteEventLog(tmp_path / "log.db", partition=2, processes=2)


async def test_one_batch_holds_every_partition_with_records(tmp_path: Path) -> None:
    """The router commits once per batch: records waiting in several partitions come in
    one batch, not one batch per partition."""
    main = tmp_path / "log.db"
    first = SqliteEventLog(main, partition=0, processes=2)
    second = SqliteEventLog(main, partition=1, processes=2)
    try:
        await first.append("t", [Record("k", b"a1"), Record("k", b"a2")])
        await second.append("t", [Record("k", b"b1")])
        consumer = first.consume("t", "router").__aiter__()
        batch = await asyncio.wait_for(consumer.__anext__(), 5)
        assert sorted(_values(batch)) == [(0, b"a1"), (0, b"a2"), (1, b"b1")]
    finally:
        await first.aclose()
        await second.aclose()


async def test_new_log_files_have_large_pages(tmp_path: Path) -> None:
    log = SqliteEventLog(tmp_path / "log.db", partition=0, processes=2)
    await log.aclose()
    for name in ("log.db", "log-1.db"):
        with closing(sqlite3.connect(tmp_path / name)) as conn:
            assert conn.execute("PRAGMA page_size").fetchone() == (PAGE_SIZE,)
    assert PAGE_SIZE == 32768
