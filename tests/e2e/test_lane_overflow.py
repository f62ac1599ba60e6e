"""A destination slower than its events arrive: its lane overflows into the store, and the
deliveries still go out oldest first (pipeline/deliver.py, `Lane.spilling`).

The real app, router, dispatcher, store, sender and receiver, in one process so the lane's
backlog cap can be made small: the app is called as ASGI (no HTTP in front of it), the
receiver answers after a delay, and events arrive faster than the destination's two
connections can take them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from pathlib import Path

import pytest

from tests.support import Receiver
from tidegate import admin, telemetry
from tidegate.api.app import build_app
from tidegate.cli.common import load_settings
from tidegate.pipeline import deliver, runner
from tidegate.pipeline.runner import Worker
from tidegate.runtime import open_runtime
from tidegate.store import DeliveryQuery

EVENTS = 200
LANE_CAP = 20
SEND_INTERVAL_S = 0.003  # at most about 330 events/s offered
RESPONSE_DELAY_S = 0.04  # two connections: at most 50 deliveries/s, whatever the machine


async def test_an_overflowing_lane_still_delivers_oldest_first(
    fresh_dir: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deliver, "_MAX_LANE_BACKLOG", LANE_CAP)
    monkeypatch.setattr(deliver, "_CLAIMABLE_BACKLOG", LANE_CAP // 2)
    # In proportion, as in production (500 claimed at a time into a lane of 10,000)
    monkeypatch.setattr(runner, "_CLAIM_LIMIT", LANE_CAP // 4)
    settings = load_settings(
        data_dir=fresh_dir,
        region="eu",
        ssrf_allow_cidrs=("127.0.0.1/32",),
        https_only=False,
        destination_concurrency=2,
    )
    rt = open_runtime(settings)
    worker = Worker(rt)
    spilled_before = telemetry.SPILLED._value.get()
    try:
        tenant = await admin.create_tenant(rt, "t", "eu")
        path = f"/{uuid.uuid4().hex}"
        url = receiver.on(path, f"slow:{RESPONSE_DELAY_S}")
        await admin.create_destination(rt, tenant.id, url=url)
        _source, write_key = await admin.create_source(rt, tenant.id, "s")
        app = build_app(rt)
        worker.start()
        for n in range(EVENTS):
            await _track(app, write_key, n)
            await asyncio.sleep(SEND_INTERVAL_S)

        sent = time.monotonic()
        deadline = sent + 60
        while len(receiver.at(path)) < EVENTS and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        got = receiver.at(path)
        order = [json.loads(r.body)["properties"]["n"] for r in got]
        assert sorted(order) == list(range(EVENTS))
        assert len({r.headers["webhook-id"] for r in got}) == EVENTS
        # The lane overflowed (the test measures what it means to) ...
        assert telemetry.SPILLED._value.get() > spilled_before
        # ... and yet no event was overtaken by many sent after it: the lane's backlog,
        # the two in flight and a router batch at most. Before, the overflow waited in
        # the store until the events stopped coming, overtaken by most of what followed.
        newest = -1
        overtaken = 0
        for n in order:
            newest = max(newest, n)
            overtaken = max(overtaken, newest - n)
        assert overtaken <= 3 * LANE_CAP, order
        await asyncio.sleep(0.2)
        pending = await rt.store.deliveries.list_deliveries(
            tenant.id, DeliveryQuery(status="pending", limit=10)
        )
        assert pending == []
    finally:
        await worker.stop()
        await rt.aclose()


async def _track(app: object, write_key: str, n: int) -> None:
    body = json.dumps(
        {"type": "track", "userId": "u", "event": "E", "properties": {"n": n}}
    ).encode()
    authorization = b"Basic " + base64.b64encode(write_key.encode() + b":")
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/track",
        "raw_path": b"/v1/track",
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"authorization", authorization),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "http_version": "1.1",
        "scheme": "http",
        "server": ("127.0.0.1", 80),
        "client": ("127.0.0.1", 1),
        "root_path": "",
        "state": {},
    }
    statuses: list[int] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(int(message["status"]))  # type: ignore[call-overload]

    await app(scope, receive, send)  # type: ignore[operator]
    assert statuses == [200]
