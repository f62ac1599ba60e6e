"""Deliveries routed straight into a real store, for tests that drive a `Dispatcher`."""

from __future__ import annotations

import msgspec

from tidegate.ids import new_event_id, now_ms
from tidegate.model import (
    Delivery,
    DestinationId,
    EventBody,
    EventId,
    EventMeta,
    SourceId,
    TenantId,
)
from tidegate.pipeline.deliver import Loaded
from tidegate.runtime import Runtime
from tidegate.store import RoutedEvent


async def routed(
    rt: Runtime, tenant_id: TenantId, destination_id: DestinationId, count: int
) -> tuple[list[Delivery], dict[EventId, Loaded]]:
    """`count` track events stored and routed to one destination, as the router does:
    their deliveries (leased to this process) and the plaintext the router hands over."""
    cipher = await rt.envelope.cipher(tenant_id)
    events, plaintext = [], {}
    for n in range(count):
        event_id = new_event_id()
        body = EventBody(
            name="E", message_id=f"m-{n}", payload=msgspec.json.encode({"type": "track", "n": n})
        )
        meta = EventMeta(
            id=event_id,
            tenant_id=tenant_id,
            source_id=SourceId("src"),
            kind="segment",
            type="track",
            received_at_ms=now_ms(),
            name_index=cipher.index("E"),
            dedupe_index=cipher.index(f"m-{n}"),
        )
        ciphertext = cipher.encrypt(msgspec.msgpack.encode(body), event_id.encode())
        events.append(RoutedEvent(meta, ciphertext, (destination_id,)))
        plaintext[event_id] = Loaded(body=body, kind="segment", received_at_ms=now_ms())
    deliveries = await rt.store.events.record_routed(
        events, now_ms=now_ms(), dedupe_window_ms=60_000, lease_ms=60_000
    )
    return deliveries, plaintext
