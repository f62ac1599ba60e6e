"""The embedded log gathers concurrent appends into one write job per commit group."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from tidegate.embedded import EmbeddedDatabase
from tidegate.errors import BackendUnavailable
from tidegate.eventlog import Record
from tidegate.eventlog.sqlite import SqliteEventLog


def _kept(path: Path) -> list[tuple[int, bytes]]:
    with closing(sqlite3.connect(path)) as conn:
        return list(conn.execute("SELECT pos, value FROM records ORDER BY pos"))


def _count_jobs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the write jobs submitted to any embedded database from now on."""
    jobs: list[int] = []
    submit = EmbeddedDatabase.submit

    def counted(self: EmbeddedDatabase, fn: Any, then: Any = None) -> Any:
        jobs.append(1)
        return submit(self, fn, then)

    monkeypatch.setattr(EmbeddedDatabase, "submit", counted)
    return jobs


async def test_concurrent_appends_share_a_job_and_keep_their_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = SqliteEventLog(tmp_path / "log.db")
    try:
        await log.append("t", [Record("k", b"first")])
        jobs = _count_jobs(monkeypatch)
        # Each append of two records starts at once, in order, without waiting for the
        # others: they gather while the first job's writer lingers.
        appends = [
            asyncio.ensure_future(
                log.append("t", [Record("k", b"%da" % i), Record("k", b"%db" % i)])
            )
            for i in range(200)
        ]
        await asyncio.wait_for(asyncio.gather(*appends), 10)
        assert len(jobs) < 20, f"{len(jobs)} write jobs for 200 appends"
    finally:
        await log.aclose()
    kept = _kept(tmp_path / "log.db")
    assert [pos for pos, _ in kept] == list(range(401))
    assert [value for _, value in kept] == [b"first"] + [
        b"%d%s" % (i, half) for i in range(200) for half in (b"a", b"b")
    ]


async def test_a_failed_write_fails_every_append_it_gathered_and_writes_none_of_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = SqliteEventLog(tmp_path / "log.db")
    insert = log._insert
    failures = [1]

    def failing(topic: str, gathered: Any, conn: sqlite3.Connection) -> None:
        insert(topic, gathered, conn)  # its rows are in the transaction that rolls back
        if failures:
            failures.pop()
            raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(log, "_insert", failing)
    try:
        doomed = [
            asyncio.ensure_future(log.append("t", [Record("k", b"lost%d" % i)])) for i in range(10)
        ]
        outcomes = await asyncio.wait_for(asyncio.gather(*doomed, return_exceptions=True), 10)
        assert all(isinstance(o, BackendUnavailable) for o in outcomes), outcomes
        await log.append("t", [Record("k", b"kept")])
    finally:
        await log.aclose()
    assert _kept(tmp_path / "log.db") == [(0, b"kept")]


async def test_a_cancelled_append_leaves_the_others_of_its_group_to_commit(
    tmp_path: Path,
) -> None:
    log = SqliteEventLog(tmp_path / "log.db")
    try:
        appends = [
            asyncio.ensure_future(log.append("t", [Record("k", b"%d" % i)])) for i in range(5)
        ]
        await asyncio.sleep(0)  # all five have gathered; the writer lingers
        appends[2].cancel()
        done = await asyncio.wait_for(asyncio.gather(*appends, return_exceptions=True), 10)
        assert isinstance(done[2], asyncio.CancelledError)
        assert [d for i, d in enumerate(done) if i != 2] == [None] * 4
    finally:
        await log.aclose()
    # The cancelled caller's record was already gathered: it commits with the others
    # (as a cancelled write did before), and its caller was told nothing either way.
    assert [v for _, v in _kept(tmp_path / "log.db")] == [b"0", b"1", b"2", b"3", b"4"]


async def test_an_append_to_a_closed_log_is_refused_and_strands_no_later_one(
    tmp_path: Path,
) -> None:
    log = SqliteEventLog(tmp_path / "log.db")
    await log.aclose()
    for _ in range(2):
        with pytest.raises(BackendUnavailable):
            await asyncio.wait_for(log.append("t", [Record("k", b"x")]), 5)


async def test_sixteen_gathered_appends_end_the_writers_linger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A linger no test would wait out: only the 16th append's wake-up commits the group.
    monkeypatch.setattr("tidegate.eventlog.sqlite._LINGER_S", 600.0)
    log = SqliteEventLog(tmp_path / "log.db")
    try:
        appends = [
            asyncio.ensure_future(log.append("t", [Record("k", b"%d" % i)])) for i in range(16)
        ]
        await asyncio.wait_for(asyncio.gather(*appends), 10)
    finally:
        await log.aclose()
    assert len(_kept(tmp_path / "log.db")) == 16
