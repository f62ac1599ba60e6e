"""An append in one process wakes the embedded log's consumers in another (AppendSignal).

The consumers here poll only every 30 s (`poll_s`), so a record that reaches them within
the tests' 10 s came by the datagram; where they cannot listen, they fall back to
polling every few milliseconds, as before the signal.
"""

from __future__ import annotations

import asyncio
import socket
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from tidegate.eventlog import Batch, Record
from tidegate.eventlog.sqlite import SqliteEventLog

_APPEND_ELSEWHERE = """
import asyncio, sys
from pathlib import Path
from tidegate.eventlog import Record
from tidegate.eventlog.sqlite import SqliteEventLog

async def main() -> None:
    log = SqliteEventLog(Path(sys.argv[1]), partition=1, processes=2)
    await log.append("t", [Record("k", b"from another process")])
    await asyncio.sleep(0.05)  # the signal goes out at the end of the loop's turn
    await log.aclose()

asyncio.run(main())
"""


async def _next(consumer: AsyncIterator[Batch]) -> list[bytes]:
    batch = await asyncio.wait_for(consumer.__anext__(), 10)
    return [r.value for r in batch.records]


async def test_an_append_in_another_process_wakes_the_consumer(tmp_path: Path) -> None:
    main = tmp_path / "log.db"
    log = SqliteEventLog(main, partition=0, processes=2, poll_s=30)
    try:
        consumer = log.consume("t", "router").__aiter__()
        first = asyncio.ensure_future(_next(consumer))
        await asyncio.sleep(0.2)  # the consumer is waiting, its socket bound
        wake = main.with_name("log.db.wake")
        assert stat.S_ISSOCK(wake.stat().st_mode)
        assert stat.S_IMODE(wake.stat().st_mode) == 0o600
        await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", _APPEND_ELSEWHERE, str(main)],
            check=True,
            timeout=60,
        )
        assert await first == [b"from another process"]
    finally:
        await log.aclose()
    assert not main.with_name("log.db.wake").exists()


async def test_a_socket_left_by_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    main = tmp_path / "log.db"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(str(main.with_name("log.db.wake")))
    stale.close()  # its file stays, as after a crash
    log = SqliteEventLog(main, partition=0, processes=2, poll_s=30)
    other = SqliteEventLog(main, partition=1, processes=2)
    try:
        consumer = log.consume("t", "router").__aiter__()
        first = asyncio.ensure_future(_next(consumer))
        await asyncio.sleep(0.2)
        await other.append("t", [Record("k", b"b1")])
        assert await first == [b"b1"]
    finally:
        await other.aclose()
        await log.aclose()


async def test_without_the_socket_consumers_poll(tmp_path: Path) -> None:
    """A second listener on the same log, and a path longer than AF_UNIX allows: both
    consumers still get other processes' records, by polling."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    logs = {
        "listening": SqliteEventLog(tmp_path / "log.db", partition=0, processes=2, poll_s=30),
        "second": SqliteEventLog(tmp_path / "log.db", partition=0, processes=2, poll_s=30),
        "long path": SqliteEventLog(deep / "log.db", partition=0, processes=2, poll_s=30),
    }
    writers = [
        SqliteEventLog(tmp_path / "log.db", partition=1, processes=2),
        SqliteEventLog(deep / "log.db", partition=1, processes=2),
    ]
    try:
        consumers = {name: log.consume("t", name).__aiter__() for name, log in logs.items()}
        pending = {name: asyncio.ensure_future(_next(c)) for name, c in consumers.items()}
        await asyncio.sleep(0.2)
        assert not (deep / "log.db.wake").exists()
        for writer in writers:
            await writer.append("t", [Record("k", b"x")])
        assert {name: await got for name, got in pending.items()} == {
            "listening": [b"x"],
            "second": [b"x"],
            "long path": [b"x"],
        }
    finally:
        for log in (*writers, *logs.values()):
            await log.aclose()
