"""SqliteEventLog: the embedded log, SQLite files in WAL mode with group commit.

Partition 0 is the main file (`log.db`), which also holds every consumer group's
offsets. `tidegate serve --processes N` gives each extra api process a partition file
of its own (`log-1.db`, ... `log-<N-1>.db`), so every file has exactly one process
appending to it and no process waits on another's lock. Order is kept per partition,
which is per connection: events sent one after the other on a connection stay in order.

Consumers read every partition file in the directory; they are woken by appends made
in this process, and by a datagram that other processes (the api processes, the CLI)
send after their appends commit (`AppendSignal`, eventlog/wake.py). They still look every
`poll_s`; where this process cannot listen for those datagrams, every few milliseconds
while other partitions exist.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from functools import partial
from pathlib import Path

from tidegate.embedded import EmbeddedDatabase, connect, sqlite_path
from tidegate.eventlog.base import Batch, LogRecord, Record
from tidegate.eventlog.wake import AppendSignal

RECORDS = """
CREATE TABLE IF NOT EXISTS records (
    topic     TEXT    NOT NULL,
    pos       INTEGER NOT NULL,
    key       TEXT    NOT NULL,
    value     BLOB    NOT NULL,
    PRIMARY KEY (topic, pos)
) WITHOUT ROWID;
"""
MAIN = (
    RECORDS
    + """
CREATE TABLE IF NOT EXISTS offsets (
    grp       TEXT    NOT NULL,
    topic     TEXT    NOT NULL,
    part      INTEGER NOT NULL,
    committed INTEGER NOT NULL,
    PRIMARY KEY (grp, topic, part)
) WITHOUT ROWID;
"""
)
# Before partitions, offsets were kept per (group, topic) in `group_offsets`: partition 0.
_UPGRADE = """
BEGIN IMMEDIATE;
INSERT OR IGNORE INTO offsets (grp, topic, part, committed)
    SELECT grp, topic, 0, committed FROM group_offsets;
DROP TABLE group_offsets;
COMMIT;
"""


# Pages of 32 KiB for new log files, where SQLite's default is 4 KiB. A record holds up
# to a request's events (about 31 KB for a batch of 100): on 4 KiB pages a chain of
# overflow pages, each written to the WAL, copied by the checkpoint and read back to be
# freed by the trim, a system call apiece; on 32 KiB pages mostly one cell. 64 KiB pages
# did worse than 32: each commit rewrites the last, part-filled page, and half as big a
# page is half as much of that. (b) with the driver of the benchmarks' seventh session:
# an api process's log writer at 0.5 µs of CPU per event against 0.6-0.9 with 4 KiB or
# 64 KiB pages. A file keeps the page size it was made with.
PAGE_SIZE = 32 * 1024


def partition_path(main: Path, partition: int) -> Path:
    """`log.db` for partition 0, `log-3.db` for partition 3."""
    return main if partition == 0 else main.with_name(f"{main.stem}-{partition}{main.suffix}")


class SqliteEventLog:
    """The embedded EventLog.

    `partition` is the partition this process appends to; `processes` is how many
    processes append (one partition each). Partition 0's process also trims the
    partitions no running process owns (left by an earlier run with more processes).
    """

    def __init__(
        self, path: Path, *, partition: int = 0, processes: int = 1, poll_s: float = 0.5
    ) -> None:
        if not 0 <= partition < processes:
            raise ValueError(f"partition {partition} is not one of {processes} processes")
        self._path = path
        self._main = EmbeddedDatabase(path, MAIN, page_size=PAGE_SIZE, linger_s=_LINGER_S)
        _upgrade(path)
        self._partition = partition
        self._processes = processes
        self._files: dict[int, EmbeddedDatabase] = {0: self._main}
        self._own = self._open(partition)
        if partition == 0:  # the consumers' process: they read every partition
            for index in range(1, processes):
                self._open(index)
        self._poll_s = poll_s
        self._wakeups: dict[str, asyncio.Event] = {}
        self._closing = asyncio.Event()
        self._signal = AppendSignal(
            path.with_name(path.name + ".wake"), interval_s=_SIGNAL_INTERVAL_S
        )

    @classmethod
    def from_url(cls, url: str, *, partition: int = 0, processes: int = 1) -> SqliteEventLog:
        return cls(sqlite_path(url, "TIDEGATE_LOG_URL"), partition=partition, processes=processes)

    def _open(self, partition: int) -> EmbeddedDatabase:
        db = self._files.get(partition)
        if db is None:
            db = self._files[partition] = EmbeddedDatabase(
                partition_path(self._path, partition),
                RECORDS,
                readers=1,
                page_size=PAGE_SIZE,
                linger_s=_LINGER_S,
            )
        return db

    def _discover(self) -> dict[int, EmbeddedDatabase]:
        """Every partition file in the directory, those of processes gone included."""
        pattern = re.compile(rf"{re.escape(self._path.stem)}-(\d+){re.escape(self._path.suffix)}")
        for found in self._path.parent.glob(f"{self._path.stem}-*{self._path.suffix}"):
            if (match := pattern.fullmatch(found.name)) and int(match[1]) > 0:
                self._open(int(match[1]))
        return dict(sorted(self._files.items()))

    def _wakeup(self, topic: str) -> asyncio.Event:
        event = self._wakeups.get(topic)  # once per append: no Event built to be thrown away
        if event is None:
            event = self._wakeups[topic] = asyncio.Event()
        return event

    async def append(self, topic: str, records: Sequence[Record]) -> None:
        if not records:
            return
        rows = [(r.key, r.value) for r in records]

        def insert(conn: sqlite3.Connection) -> None:
            (last,) = conn.execute(
                "SELECT MAX(pos) FROM records WHERE topic = ?", (topic,)
            ).fetchone()
            first = 0 if last is None else last + 1
            conn.executemany(
                "INSERT INTO records (topic, pos, key, value) VALUES (?, ?, ?, ?)",
                [(topic, first + i, key, value) for i, (key, value) in enumerate(rows)],
            )

        await self._own.write(insert)
        self._wakeup(topic).set()
        self._signal.signal_soon()

    async def consume(
        self, topic: str, group: str, *, max_records: int = 500
    ) -> AsyncIterator[Batch]:
        wakeup = self._wakeup(topic)
        # before the first read: an append that commits after it sends a datagram
        signalled = self._signal.listen()
        positions = await self._main.read(lambda c: _committed(c, group, topic))
        files = self._discover()
        discovered = time.monotonic()
        first = -1  # the partition read first in the last round
        while not self._closing.is_set():
            wakeup.clear()
            started = time.monotonic()
            # One batch per round from every partition with records, so a consumer with
            # several partitions commits its work once per round, not once per partition.
            # Up to `max_records` in all; the partition read first rotates, so a busy
            # partition does not starve the others.
            order = list(files.items())
            first = (first + 1) % len(order)
            records: list[LogRecord] = []
            for partition, db in order[first:] + order[:first]:
                budget = max_records - len(records)
                if budget <= 0:
                    break
                after = positions.get(partition, -1)
                rows = db.read_now(partial(_read_after, topic, after, budget))
                if rows:
                    positions[partition] = rows[-1][0]
                    records += (LogRecord(partition, off, key, value) for off, key, value in rows)
            if records:
                yield Batch(topic=topic, group=group, records=tuple(records))
                continue
            if time.monotonic() - discovered > _DISCOVER_S:
                files = self._discover()
                discovered = time.monotonic()
            # Without their datagrams, appends by other processes wake no one: look soon.
            timeout = _CROSS_PROCESS_POLL_S if len(files) > 1 and not signalled else self._poll_s
            waiter = asyncio.ensure_future(wakeup.wait())
            closer = asyncio.ensure_future(self._closing.wait())
            try:
                with self._signal.armed(self._wake_all):
                    await asyncio.wait(
                        {waiter, closer}, timeout=timeout, return_when="FIRST_COMPLETED"
                    )
            finally:
                waiter.cancel()
                closer.cancel()
            # Woken by another process's datagram: rounds no closer together than the polls
            # they replace, so a busy log still gives a few milliseconds of appends a round
            # (a round, and its commit downstream, per append costs the router more).
            pause = _CROSS_PROCESS_POLL_S - (time.monotonic() - started)
            if signalled and len(files) > 1 and pause > 0 and not self._closing.is_set():
                await asyncio.sleep(pause)

    async def commit(self, batch: Batch) -> None:
        latest: dict[int, int] = {}
        for record in batch.records:
            latest[record.partition] = max(record.offset, latest.get(record.partition, -1))
        if not latest:
            return

        def save(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO offsets (grp, topic, part, committed) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (grp, topic, part) DO UPDATE"
                " SET committed = MAX(committed, excluded.committed)",
                [(batch.group, batch.topic, part, last) for part, last in latest.items()],
            )

        await self._main.write(save)

    async def trim(self, topic: str) -> int:
        """Delete records every group has committed, in the partitions this process owns
        (its own; for partition 0, also those no running process owns). The newest record
        of a partition always stays, so its offsets keep growing from it. At most
        _TRIM_CHUNK records per transaction, with a pause after each, so appends queued
        behind a large trim wait for one small chunk, not for all of it (at 1,200 events/s,
        a minute's trim in one go held every append up by 50-110 ms per group for over a
        second)."""
        floors = await self._main.read(partial(_floors, topic))
        owned = [self._partition]
        if self._partition == 0:
            owned += [p for p in self._discover() if p >= self._processes]
        trimmed = 0
        for partition in owned:
            floor = floors.get(partition)
            if floor is None:
                continue
            delete = partial(_delete_chunk, topic, floor)
            db = self._files[partition]
            while (deleted := await db.write(delete)) > 0:
                trimmed += deleted
                # A pause between chunks: appends meanwhile commit in groups of their own,
                # not behind a trim (each chunk's delete makes its group slower to commit).
                await asyncio.sleep(_TRIM_PAUSE_S)
        return trimmed

    def _wake_all(self) -> None:
        for event in self._wakeups.values():
            event.set()

    async def aclose(self) -> None:
        self._closing.set()
        self._signal.close()
        for db in self._files.values():
            await db.aclose()


_TRIM_CHUNK = 1_000
_READ_BYTES = 1024 * 1024
_TRIM_PAUSE_S = 0.01
_CROSS_PROCESS_POLL_S = 0.005
# Each other process sends a datagram at most this often: at most a thousand `sendto`s
# a second, and under 1 ms added to the wait the 5 ms cross-process poll used to have.
_SIGNAL_INTERVAL_S = 0.001
# An append waits up to this long for others to share its commit. At moderate rates each
# request's append had a commit of its own (fsync takes ~0.15 ms here, so few others
# arrived meanwhile), and a durable commit costs ~70 µs of CPU. At 3,600 events/s to
# `serve --processes 3`: the api processes 205-209 µs of CPU per event against 244-246
# with none (1 ms: 226); at 5,000/s, 0.92-0.96 of the events delivered while sending
# against 0.82-0.92 (docs/benchmarks.md, thirteenth session). 4 ms against 2, the api
# processes' CPU per event over the generator's: 3.57-3.60 against 3.74-3.79 at 3,600/s,
# 3.15-3.27 against 3.67-3.76 at 1,200/s, with the same ack and delivery p99
# (seventeenth session).
_LINGER_S = 0.004
_DISCOVER_S = 1.0


def _upgrade(path: Path) -> None:
    conn = connect(path)
    try:
        if conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'group_offsets'"
        ).fetchone():
            conn.executescript(_UPGRADE)
    finally:
        conn.close()


def _read_after(
    topic: str, position: int, limit: int, conn: sqlite3.Connection
) -> list[tuple[int, str, bytes]]:
    """Up to `limit` records after `position`, and about _READ_BYTES at most (a record
    holds up to a request's worth of events)."""
    rows: list[tuple[int, str, bytes]] = []
    size = 0
    cursor = conn.execute(
        "SELECT pos, key, value FROM records WHERE topic = ? AND pos > ? ORDER BY pos LIMIT ?",
        (topic, position, limit),
    )
    try:
        for row in cursor:
            rows.append(row)
            size += len(row[2])
            if size >= _READ_BYTES:
                break
    finally:
        cursor.close()  # a statement left running would keep the read transaction open
    return rows


def _committed(conn: sqlite3.Connection, group: str, topic: str) -> dict[int, int]:
    rows = conn.execute(
        "SELECT part, committed FROM offsets WHERE grp = ? AND topic = ?", (group, topic)
    ).fetchall()
    return {int(part): int(committed) for part, committed in rows}


def _floors(topic: str, conn: sqlite3.Connection) -> dict[int, int]:
    """Per partition, the lowest offset every group has committed."""
    rows = conn.execute(
        "SELECT part, MIN(committed) FROM offsets WHERE topic = ? GROUP BY part", (topic,)
    ).fetchall()
    return {int(part): int(floor) for part, floor in rows}


def _delete_chunk(topic: str, floor: int, conn: sqlite3.Connection) -> int:
    # Two statements: SQLite answers a lone MIN() or MAX() from the primary key's ends,
    # but both in one SELECT scan every row (67 ms at a 300,000-record backlog, per
    # chunk, where each of these takes microseconds).
    (oldest,) = conn.execute("SELECT MIN(pos) FROM records WHERE topic = ?", (topic,)).fetchone()
    if oldest is None:
        return 0
    (newest,) = conn.execute("SELECT MAX(pos) FROM records WHERE topic = ?", (topic,)).fetchone()
    return int(
        conn.execute(
            "DELETE FROM records WHERE topic = ? AND pos <= ? AND pos < ? AND pos < ?",
            (topic, floor, newest, oldest + _TRIM_CHUNK),
        ).rowcount
    )
