"""The router's committer: offsets committed behind routing, merged, never lost on flush."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tidegate.eventlog import Batch, Record
from tidegate.eventlog.sqlite import SqliteEventLog
from tidegate.pipeline.router import _Committer


async def _batches(log: SqliteEventLog, count: int) -> list[Batch]:
    seen: list[Batch] = []
    iterator = log.consume("t", "router", max_records=1).__aiter__()
    while len(seen) < count:
        seen.append(await asyncio.wait_for(iterator.__anext__(), 5))
    return seen


async def test_batches_added_while_one_commits_are_all_committed_by_flush(
    tmp_path: Path,
) -> None:
    log = SqliteEventLog(tmp_path / "log.db")
    await log.append("t", [Record("k", str(i).encode()) for i in range(6)])
    batches = await _batches(log, 5)  # one record each: offsets 0..4
    committer = _Committer(log)
    for batch in batches:  # no await between: the first commits alone, the rest merge
        committer.add(batch)
    await committer.flush()
    await log.aclose()

    restarted = SqliteEventLog(tmp_path / "log.db")
    try:
        (after,) = await _batches(restarted, 1)
        assert [r.value for r in after.records] == [b"5"]
    finally:
        await restarted.aclose()


async def test_an_out_of_order_add_never_moves_the_offset_back(tmp_path: Path) -> None:
    log = SqliteEventLog(tmp_path / "log.db")
    await log.append("t", [Record("k", str(i).encode()) for i in range(3)])
    first, second = await _batches(log, 2)
    committer = _Committer(log)
    committer.add(second)
    committer.add(first)
    await committer.flush()
    await log.aclose()

    restarted = SqliteEventLog(tmp_path / "log.db")
    try:
        (after,) = await _batches(restarted, 1)
        assert [r.value for r in after.records] == [b"2"]
    finally:
        await restarted.aclose()
