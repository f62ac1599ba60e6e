"""Attempts cannot outrun the store: with too many outcomes waiting to be recorded, a lane
slot is held until its own outcome is (pipeline/deliver.py, `_MAX_UNRECORDED`).

A real store, sender and receiver; the store's `record_attempts` is held shut by a gate,
as a store writer far behind would hold it, and then opened.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.dispatching import local_settings, routed
from tests.support import Receiver
from tidegate import admin
from tidegate.destinations.webhook import WebhookSender
from tidegate.pipeline import deliver
from tidegate.pipeline.deliver import Dispatcher
from tidegate.runtime import open_runtime
from tidegate.store import AttemptResult, DeliveryQuery

EVENTS = 40
CONCURRENCY = 4
MAX_UNRECORDED = 5


async def _received(receiver: Receiver, path: str, count: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while len(receiver.at(path)) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return len(receiver.at(path))


async def test_attempts_wait_for_the_store_when_outcomes_pile_up(
    fresh_dir: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deliver, "_MAX_UNRECORDED", MAX_UNRECORDED)
    settings = local_settings(
        fresh_dir,
        destination_concurrency=CONCURRENCY,
        destination_concurrency_max=CONCURRENCY,  # a fixed cap: the count below is exact
    )
    rt = open_runtime(settings)
    sender = WebhookSender(rt.ssrf, default_timeout_s=5)
    try:
        tenant = await admin.create_tenant(rt, "t", "eu")
        path = f"/{uuid.uuid4().hex}"
        destination, _ = await admin.create_destination(rt, tenant.id, url=receiver.on(path, 200))

        gate = asyncio.Event()
        record = rt.store.deliveries.record_attempts

        async def held(results: Sequence[AttemptResult], *, now_ms: int) -> None:
            await gate.wait()
            await record(results, now_ms=now_ms)

        monkeypatch.setattr(rt.store.deliveries, "record_attempts", held)

        deliveries, plaintext = await routed(rt, tenant.id, destination.id, EVENTS)
        assert len(deliveries) == EVENTS

        dispatcher = Dispatcher(rt, sender, on_recovered=lambda: None)
        dispatcher.submit(deliveries, plaintext)
        # MAX_UNRECORDED attempts give their slot back at once; the next CONCURRENCY hold
        # theirs, and then the lane is full until the store records something
        held_back = MAX_UNRECORDED + CONCURRENCY
        assert await _received(receiver, path, held_back, 10) == held_back
        assert await _received(receiver, path, held_back + 1, 1.0) == held_back

        gate.set()
        assert await _received(receiver, path, EVENTS, 20) == EVENTS
        await dispatcher.drain(10)
        succeeded = await rt.store.deliveries.list_deliveries(
            tenant.id, DeliveryQuery(status="succeeded", limit=100)
        )
        assert len(succeeded) == EVENTS
    finally:
        await sender.aclose()
        await rt.aclose()
