"""SqliteEventLog: the embedded log, one SQLite file in WAL mode with group commit.

One partition per topic: order is global, which keeps every tenant's order too.
Consumers in this process are woken by appends; an append made by another process
(the CLI, or a separate api process) is noticed within `poll_s`.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Sequence
from functools import partial
from pathlib import Path

from tidegate.embedded import EmbeddedDatabase, sqlite_path
from tidegate.eventlog.base import Batch, LogRecord, Record

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    topic     TEXT    NOT NULL,
    pos       INTEGER NOT NULL,
    key       TEXT    NOT NULL,
    value     BLOB    NOT NULL,
    PRIMARY KEY (topic, pos)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS group_offsets (
    grp       TEXT    NOT NULL,
    topic     TEXT    NOT NULL,
    committed INTEGER NOT NULL,
    PRIMARY KEY (grp, topic)
) WITHOUT ROWID;
"""


class SqliteEventLog:
    """The embedded EventLog."""

    def __init__(self, path: Path, *, poll_s: float = 0.5) -> None:
        self._db = EmbeddedDatabase(path, SCHEMA)
        self._poll_s = poll_s
        self._wakeups: dict[str, asyncio.Event] = {}
        self._closing = asyncio.Event()

    @classmethod
    def from_url(cls, url: str) -> SqliteEventLog:
        return cls(sqlite_path(url, "TIDEGATE_LOG_URL"))

    def _wakeup(self, topic: str) -> asyncio.Event:
        return self._wakeups.setdefault(topic, asyncio.Event())

    async def append(self, topic: str, records: Sequence[Record]) -> None:
        if not records:
            return
        rows = [(r.key, r.value) for r in records]

        def insert(conn: sqlite3.Connection) -> None:
            (last,) = conn.execute(
                "SELECT COALESCE(MAX(pos), -1) FROM records WHERE topic = ?", (topic,)
            ).fetchone()
            conn.executemany(
                "INSERT INTO records (topic, pos, key, value) VALUES (?, ?, ?, ?)",
                [(topic, last + 1 + i, key, value) for i, (key, value) in enumerate(rows)],
            )

        await self._db.write(insert)
        self._wakeup(topic).set()

    async def consume(
        self, topic: str, group: str, *, max_records: int = 500
    ) -> AsyncIterator[Batch]:
        wakeup = self._wakeup(topic)
        position = await self._db.read(lambda c: _committed(c, group, topic))
        while not self._closing.is_set():
            wakeup.clear()
            rows = self._db.read_now(partial(_read_after, topic, position, max_records))
            if rows:
                position = rows[-1][0]
                yield Batch(
                    topic=topic,
                    group=group,
                    records=tuple(LogRecord(0, off, key, value) for off, key, value in rows),
                )
                continue
            waiter = asyncio.ensure_future(wakeup.wait())
            closer = asyncio.ensure_future(self._closing.wait())
            try:
                await asyncio.wait(
                    {waiter, closer}, timeout=self._poll_s, return_when="FIRST_COMPLETED"
                )
            finally:
                waiter.cancel()
                closer.cancel()

    async def commit(self, batch: Batch) -> None:
        if not batch.records:
            return
        last = batch.records[-1].offset

        def save(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO group_offsets (grp, topic, committed) VALUES (?, ?, ?)"
                " ON CONFLICT (grp, topic) DO UPDATE"
                " SET committed = MAX(committed, excluded.committed)",
                (batch.group, batch.topic, last),
            )

        await self._db.write(save)

    async def trim(self, topic: str) -> int:
        """Delete records every group has committed; the newest record always stays, so
        offsets keep growing from it. At most _TRIM_CHUNK records per transaction, with a
        pause after each, so appends queued behind a large trim wait for one small chunk,
        not for all of it (at 1,200 events/s, a minute's trim in one go held every append
        up by 50-110 ms per group for over a second)."""

        def delete(conn: sqlite3.Connection) -> int:
            (floor,) = conn.execute(
                "SELECT MIN(committed) FROM group_offsets WHERE topic = ?", (topic,)
            ).fetchone()
            if floor is None:
                return 0
            (oldest, newest) = conn.execute(
                "SELECT MIN(pos), COALESCE(MAX(pos), -1) FROM records WHERE topic = ?", (topic,)
            ).fetchone()
            if oldest is None:
                return 0
            return int(
                conn.execute(
                    "DELETE FROM records WHERE topic = ? AND pos <= ? AND pos < ? AND pos < ?",
                    (topic, floor, newest, oldest + _TRIM_CHUNK),
                ).rowcount
            )

        trimmed = 0
        while (deleted := await self._db.write(delete)) > 0:
            trimmed += deleted
            # A pause between chunks: appends meanwhile commit in groups of their own,
            # not behind a trim (each chunk's delete makes its group slower to commit).
            await asyncio.sleep(_TRIM_PAUSE_S)
        return trimmed

    async def aclose(self) -> None:
        self._closing.set()
        await self._db.aclose()


_TRIM_CHUNK = 1_000
_TRIM_PAUSE_S = 0.01


def _read_after(
    topic: str, position: int, limit: int, conn: sqlite3.Connection
) -> list[tuple[int, str, bytes]]:
    return conn.execute(
        "SELECT pos, key, value FROM records WHERE topic = ? AND pos > ? ORDER BY pos LIMIT ?",
        (topic, position, limit),
    ).fetchall()


def _committed(conn: sqlite3.Connection, group: str, topic: str) -> int:
    row = conn.execute(
        "SELECT committed FROM group_offsets WHERE grp = ? AND topic = ?", (group, topic)
    ).fetchone()
    return int(row[0]) if row else -1
