"""The EventLog contract: durable appends, ordered consumption per group, commits, trim."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from tidegate.eventlog import Batch, EventLog, Record


async def _next(log: EventLog, topic: str, group: str, timeout: float = 5) -> Batch:
    iterator = log.consume(topic, group).__aiter__()
    return await asyncio.wait_for(iterator.__anext__(), timeout)


async def test_appended_records_are_consumed_in_order(log_factory: Callable[[], EventLog]) -> None:
    log = log_factory()
    await log.append("t", [Record("k", b"1"), Record("k", b"2")])
    await log.append("t", [Record("k", b"3")])
    batch = await _next(log, "t", "g")
    assert [r.value for r in batch.records] == [b"1", b"2", b"3"]


async def test_consumer_is_woken_by_an_append(log_factory: Callable[[], EventLog]) -> None:
    """No sleep loop: a consumer waiting for records sees a new one at once.

    A warm-up record first, so the consumer has joined its group (a Kafka group join
    takes a second or more); then the wake-up itself is timed.
    """
    log = log_factory()
    iterator = log.consume("t", "g").__aiter__()
    await log.append("t", [Record("k", b"warm-up")])
    await log.commit(await asyncio.wait_for(iterator.__anext__(), 15))
    waiting = asyncio.ensure_future(iterator.__anext__())
    await asyncio.sleep(0.05)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await log.append("t", [Record("k", b"x")])
    batch = await asyncio.wait_for(waiting, 5)
    assert batch.records[0].value == b"x"
    assert loop.time() - started < 0.2


async def test_committed_batch_is_not_redelivered(log_factory: Callable[[], EventLog]) -> None:
    log = log_factory()
    await log.append("t", [Record("k", b"1")])
    await log.commit(await _next(log, "t", "g"))
    await log.append("t", [Record("k", b"2")])
    restarted = log_factory()
    assert [r.value for r in (await _next(restarted, "t", "g")).records] == [b"2"]


async def test_uncommitted_batch_is_redelivered_after_restart(
    log_factory: Callable[[], EventLog],
) -> None:
    log = log_factory()
    await log.append("t", [Record("k", b"1")])
    await _next(log, "t", "g")  # consumed, never committed (a crash)
    restarted = log_factory()
    assert [r.value for r in (await _next(restarted, "t", "g")).records] == [b"1"]


async def test_groups_and_topics_are_independent(log_factory: Callable[[], EventLog]) -> None:
    log = log_factory()
    await log.append("a", [Record("k", b"a1")])
    await log.append("b", [Record("k", b"b1")])
    await log.commit(await _next(log, "a", "g1"))
    assert (await _next(log, "a", "g2")).records[0].value == b"a1"
    assert (await _next(log, "b", "g1")).records[0].value == b"b1"


async def test_concurrent_appends_all_survive(log_factory: Callable[[], EventLog]) -> None:
    """Group commit: many concurrent appends, each returns only when durable."""
    log = log_factory()
    await asyncio.gather(*(log.append("t", [Record("k", str(i).encode())]) for i in range(200)))
    restarted = log_factory()
    seen: list[bytes] = []
    async for batch in restarted.consume("t", "g"):
        seen += [r.value for r in batch.records]
        if len(seen) >= 200:
            break
    assert sorted(seen) == sorted(str(i).encode() for i in range(200))


async def test_trim_keeps_what_any_group_has_not_committed(
    log_factory: Callable[[], EventLog],
) -> None:
    """Trim drops only what every group with a commit has committed."""
    log = log_factory()
    await log.append("t", [Record("k", b"1")])
    await log.commit(await _next(log, "t", "slow"))
    await log.append("t", [Record("k", b"2"), Record("k", b"3")])
    fast = log.consume("t", "fast").__aiter__()
    while True:
        batch = await asyncio.wait_for(fast.__anext__(), 5)
        await log.commit(batch)
        if batch.records[-1].value == b"3":
            break
    await log.trim("t")
    restarted = log_factory()
    assert [r.value for r in (await _next(restarted, "t", "slow")).records] == [b"2", b"3"]
