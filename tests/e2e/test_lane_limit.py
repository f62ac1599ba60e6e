"""A webhook lane's in-flight limit adapts to its endpoint (pipeline/deliver.py, `_adapt`):
it grows from TIDEGATE_DESTINATION_CONCURRENCY towards _MAX while deliveries queue and
the endpoint answers, and is cut back when the endpoint answers 429.

A real store, sender and receiver (a thread per connection, counting the requests in
flight at each path)."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

from tests.dispatching import local_settings, routed
from tests.support import Receiver
from tidegate import admin
from tidegate.destinations.webhook import WebhookSender
from tidegate.pipeline.deliver import Dispatcher
from tidegate.runtime import open_runtime
from tidegate.store import DeliveryQuery

START, MOST = 4, 12


async def _deliver(
    fresh_dir: Path, receiver: Receiver, behaviour: str, events: int
) -> tuple[str, int]:
    """Route `events` to a destination on the receiver answering per `behaviour`, and
    dispatch them until each has had an attempt: the receiver's path, and how many of
    the deliveries succeeded (the others wait for a retry)."""
    settings = local_settings(
        fresh_dir,
        destination_concurrency=START,
        destination_concurrency_max=MOST,
        breaker_failures=1_000_000,  # 429s here must not open the circuit
    )
    rt = open_runtime(settings)
    sender = WebhookSender(rt.ssrf, default_timeout_s=5)
    try:
        tenant = await admin.create_tenant(rt, "t", "eu")
        path = f"/{uuid.uuid4().hex}"
        destination, _ = await admin.create_destination(
            rt, tenant.id, url=receiver.on(path, behaviour)
        )
        deliveries, plaintext = await routed(rt, tenant.id, destination.id, events)
        dispatcher = Dispatcher(rt, sender, on_recovered=lambda: None)
        dispatcher.submit(deliveries, plaintext)
        deadline = time.monotonic() + 60
        while len(receiver.at(path)) < events and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert len(receiver.at(path)) == events
        await dispatcher.drain(10)
        succeeded = await rt.store.deliveries.list_deliveries(
            tenant.id, DeliveryQuery(status="succeeded", limit=events)
        )
        return path, len(succeeded)
    finally:
        await sender.aclose()
        await rt.aclose()


async def test_a_lane_grows_to_its_most_while_an_endpoint_keeps_answering(
    fresh_dir: Path, receiver: Receiver
) -> None:
    # 20 ms an answer: at 4 in flight the queue would take 5 s; the lane grows by one
    # per limit's worth of answers (about 4 + 5 + ... + 11: 60 answers to reach 12)
    path, succeeded = await _deliver(fresh_dir, receiver, "slow:0.02", 400)
    assert receiver.peak[path] == MOST
    assert succeeded == 400


async def test_a_lane_is_cut_back_when_its_endpoint_answers_429(
    fresh_dir: Path, receiver: Receiver
) -> None:
    # The endpoint takes 6 at a time and answers 429 to a seventh: each time the lane
    # reaches 7 it is halved (to 4, its start) and grows back over a dozen answers, so
    # about one attempt in thirteen is refused. Were it not cut it would reach 12, and
    # about half would be refused.
    path, succeeded = await _deliver(fresh_dir, receiver, "busy:6:0.02", 400)
    assert 7 <= receiver.peak[path] <= 8, receiver.peak[path]
    assert succeeded >= 400 * 0.8, succeeded
