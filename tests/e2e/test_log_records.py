"""One log record per request (up to 100 events and 256 KB), and records written before
that (one bare event each) still route."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any

import msgspec
import requests

from tests.support import Receiver, TenantHandle, Tidegate, wait_until
from tidegate.api.ingest.accept import RECORD_BYTES, RECORD_EVENTS
from tidegate.cli.common import load_settings
from tidegate.eventlog import Record
from tidegate.ids import new_event_id, now_ms
from tidegate.model import EventBody, EventMeta, LogEntry, SourceId, TenantId
from tidegate.runtime import open_runtime


def _newest(tg: Tidegate) -> tuple[int, list[Any]]:
    """The newest record's position and entries: trimming never removes it."""
    with closing(sqlite3.connect(tg.data_dir / "log.db")) as c:
        position, value = c.execute(
            "SELECT pos, value FROM records ORDER BY pos DESC LIMIT 1"
        ).fetchone()
    entries: list[Any] = msgspec.msgpack.decode(value)
    assert len(value) <= RECORD_BYTES + 64 * 1024  # ciphertext + metadata
    return int(position), entries


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


def test_a_record_of_one_bare_entry_still_routes(fresh_dir: Path, receiver: Receiver) -> None:
    """The format before batching: a record's value is one LogEntry, not an array."""
    tg = Tidegate(fresh_dir).start()
    try:
        t = tg.tenant()
        path = f"/{uuid.uuid4().hex}"
        t.destination(receiver.on(path, 200))
        asyncio.run(_append_bare_entry(fresh_dir, TenantId(t.id)))
        wait_until(lambda: len(receiver.at(path)) == 1, timeout=30)
        assert receiver.at(path)[0].json()["messageId"] == "bare-1"
        events = t.get("/v1/events").json()["data"]
        assert [e["message_id"] for e in events] == ["bare-1"]
    finally:
        assert tg.stop() == 0


async def _append_bare_entry(data_dir: Path, tenant_id: TenantId) -> None:
    """What an api process wrote before batching, appended as the CLI appends (partition 0)."""
    runtime = open_runtime(load_settings(data_dir=data_dir, region="eu"))
    try:
        cipher = await runtime.envelope.cipher(tenant_id)
        event_id = new_event_id()
        payload = msgspec.json.encode(
            {"type": "track", "userId": "u", "event": "Bare", "messageId": "bare-1"}
        )
        meta = EventMeta(
            id=event_id,
            tenant_id=tenant_id,
            source_id=SourceId("src_before_batching"),
            kind="segment",
            type="track",
            received_at_ms=now_ms(),
            name_index=cipher.index("Bare"),
            dedupe_index=cipher.index("bare-1"),
        )
        body = msgspec.msgpack.encode(EventBody(name="Bare", message_id="bare-1", payload=payload))
        entry = LogEntry(meta=meta, ciphertext=cipher.encrypt(body, event_id.encode()))
        await runtime.log.append(runtime.topic, [Record(tenant_id, msgspec.msgpack.encode(entry))])
    finally:
        await runtime.aclose()
