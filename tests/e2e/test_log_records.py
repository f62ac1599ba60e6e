"""One log record per request (up to 100 events and 256 KB), and records of the formats
before (an array of LogEntry maps; one bare LogEntry) still route."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any

import msgspec
import pytest
import requests

from tests.dispatching import track_meta
from tests.support import Receiver, TenantHandle, Tidegate, wait_until
from tidegate.api.ingest.accept import RECORD_BYTES, RECORD_EVENTS
from tidegate.cli.common import load_settings
from tidegate.eventlog import Record
from tidegate.model import EventBody, LogEntry, TenantId, decode_record
from tidegate.runtime import open_runtime
from tidegate.security.envelope import TenantCipher


def _newest(tg: Tidegate) -> tuple[int, list[Any]]:
    """The newest record's position and entries: trimming never removes it."""
    with closing(sqlite3.connect(tg.data_dir / "log.db")) as c:
        position, value = c.execute(
            "SELECT pos, value FROM records ORDER BY pos DESC LIMIT 1"
        ).fetchone()
    entries = decode_record(value)
    assert len(value) <= RECORD_BYTES + 64 * 1024  # ciphertext + metadata
    # what the events share is said once, not per event
    assert msgspec.msgpack.decode(value)[:4] == [2, *_shared(entries)]
    return int(position), entries


def _shared(entries: list[LogEntry]) -> list[str]:
    (shared,) = {(e.meta.tenant_id, e.meta.source_id, e.meta.kind) for e in entries}
    return list(shared)


def _batch(t: TenantHandle, messages: list[dict[str, Any]]) -> None:
    r = requests.post(
        t.tg.base + "/v1/batch", json={"batch": messages}, auth=(t.write_key, ""), timeout=10
    )
    assert r.status_code == 200, r.text


def test_a_batch_is_a_few_records_and_every_event_is_delivered_once(
    fresh_dir: Path, receiver: Receiver
) -> None:
    tg = Tidegate(fresh_dir).start()
    try:
        t = tg.tenant()
        path = f"/{uuid.uuid4().hex}"
        t.destination(receiver.on(path, 200))
        small = [
            {"userId": "u", "type": "track", "event": "E", "messageId": f"s-{i}"}
            for i in range(250)
        ]
        _batch(t, small)
        wait_until(lambda: len(receiver.at(path)) == 250, timeout=30)
        # positions 0, 1, 2: three records, the last of 50, so the others hold 100 each
        position, entries = _newest(tg)
        assert (position, len(entries)) == (2, 250 - 2 * RECORD_EVENTS)

        # 15 events of ~30 KB: the byte limit splits them before the count does
        big = [
            {"userId": "u", "type": "track", "event": "E", "messageId": f"b-{i}",
             "properties": {"blob": "x" * 30_000}}
            for i in range(15)
        ]  # fmt: skip
        _batch(t, big)
        wait_until(lambda: len(receiver.at(path)) == 265, timeout=30)
        position, entries = _newest(tg)
        assert (position, len(entries)) == (4, 7)  # 8 of ~30 KB fit in 256 KB, then 7

        ids = [r.json()["messageId"] for r in receiver.at(path)]
        assert sorted(ids) == sorted([f"s-{i}" for i in range(250)] + [f"b-{i}" for i in range(15)])
    finally:
        assert tg.stop() == 0


@pytest.mark.parametrize("bare", [True, False], ids=["one-bare-entry", "array-of-entries"])
def test_records_of_the_earlier_formats_still_route(
    fresh_dir: Path, receiver: Receiver, bare: bool
) -> None:
    """Before batching, a record's value was one LogEntry; before RequestRecord, an array
    of LogEntry maps, each with every field of its meta."""
    tg = Tidegate(fresh_dir).start()
    try:
        t = tg.tenant()
        path = f"/{uuid.uuid4().hex}"
        t.destination(receiver.on(path, 200))
        ids = ["old-1"] if bare else ["old-1", "old-2", "old-3"]
        asyncio.run(_append_older(fresh_dir, TenantId(t.id), ids, bare=bare))
        wait_until(lambda: len(receiver.at(path)) == len(ids), timeout=30)
        assert sorted(r.json()["messageId"] for r in receiver.at(path)) == ids
        events = t.get("/v1/events").json()["data"]
        assert sorted(e["message_id"] for e in events) == ids
    finally:
        assert tg.stop() == 0


async def _append_older(data_dir: Path, tenant_id: TenantId, ids: list[str], *, bare: bool) -> None:
    """Records as an api process wrote them before, appended as the CLI appends
    (partition 0)."""
    runtime = open_runtime(load_settings(data_dir=data_dir, region="eu"))
    try:
        cipher = await runtime.envelope.cipher(tenant_id)
        entries = [_older_entry(cipher, tenant_id, message_id) for message_id in ids]
        value = msgspec.msgpack.encode(entries[0] if bare else entries)
        await runtime.log.append(runtime.topic, [Record(tenant_id, value)])
    finally:
        await runtime.aclose()


def _older_entry(cipher: TenantCipher, tenant_id: TenantId, message_id: str) -> LogEntry:
    meta = track_meta(cipher, tenant_id, "src_before_request_records", "Old", message_id)
    payload = msgspec.json.encode(
        {"type": "track", "userId": "u", "event": "Old", "messageId": message_id}
    )
    body = msgspec.msgpack.encode(EventBody(name="Old", message_id=message_id, payload=payload))
    return LogEntry(meta=meta, ciphertext=cipher.encrypt(body, meta.id.encode()))
