"""The EventLog contract: durable appends, ordered consumption per group, commits, trim."""

from __future__ import annotations

import asyncio
import contextlib
import sys
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


async def test_a_batch_holds_about_1_mb_at_most(log_factory: Callable[[], EventLog]) -> None:
    """A record can hold a request's worth of events (256 KB): a consumer asking for 500
    records gets about 1 MB, not 500 of them at once, and still every record in order."""
    log = log_factory()
    values = [bytes([i]) * 300_000 for i in range(20)]  # 6 MB in all
    for value in values:
        await log.append("t", [Record("k", value)])
    seen: list[bytes] = []
    async for batch in log.consume("t", "g", max_records=500):
        size = sum(len(r.value) for r in batch.records)
        assert size - len(batch.records[-1].value) < 1024 * 1024
        seen += [r.value for r in batch.records]
        if len(seen) >= len(values):
            break
    assert seen == values


_APPENDER = """
import asyncio, sys
from tidegate.eventlog import Record, open_event_log

async def main(url: str, name: str, count: int) -> None:
    log = open_event_log(url)
    keys = [f"tenant-{i}" for i in range(3)]
    await asyncio.gather(
        *(log.append("t", [Record(keys[i % 3], f"{name}:{i}".encode())]) for i in range(count))
    )
    await log.aclose()

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


async def test_appends_from_several_processes_all_reach_a_live_consumer(
    log_factory: Callable[[], EventLog],
) -> None:
    """Three processes append to the same partitions while a group consumes and commits:
    the group gets every record. (Tansu, with two producers on one partition, can show
    a produce before an earlier one is stored; a consumer passing that hole would
    commit past records it never saw.)"""
    url: str = log_factory.url  # type: ignore[attr-defined]
    count = 8000
    log = log_factory()
    await log.append("t", [Record("tenant-0", b"first")])  # the topic exists before the race
    seen: set[bytes] = set()

    async def consume() -> None:
        async for batch in log.consume("t", "g"):
            seen.update(record.value for record in batch.records)
            await log.commit(batch)
            if len(seen) == 3 * count + 1:
                return

    consumer = asyncio.create_task(consume())
    appenders = [
        await asyncio.create_subprocess_exec(sys.executable, "-c", _APPENDER, url, name, str(count))
        for name in ("a", "b", "c")
    ]
    assert [await appender.wait() for appender in appenders] == [0, 0, 0]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(consumer, 30)
    expected = {b"first"} | {f"{n}:{i}".encode() for n in ("a", "b", "c") for i in range(count)}
    missing = expected - seen
    assert not missing, f"{len(missing)} records never reached the group: {sorted(missing)[:5]}"


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
