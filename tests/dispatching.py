"""Events and deliveries made straight into a real runtime, for tests that drive a
`Dispatcher` or write the log themselves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from tidegate.cli.common import load_settings
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
from tidegate.security.envelope import TenantCipher
from tidegate.settings import Settings
from tidegate.store import RoutedEvent


def local_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for a runtime that delivers to a receiver on 127.0.0.1 over plain HTTP."""
    return load_settings(
        data_dir=data_dir,
        region="eu",
        ssrf_allow_cidrs=("127.0.0.1/32",),
        https_only=False,
        **overrides,
    )


def track_meta(
    cipher: TenantCipher, tenant_id: TenantId, source_id: str, name: str, message_id: str
) -> EventMeta:
    """A new track event's metadata, its indexes under the tenant's cipher."""
    return EventMeta(
        id=new_event_id(),
        tenant_id=tenant_id,
        source_id=SourceId(source_id),
        kind="segment",
        type="track",
        received_at_ms=now_ms(),
        name_index=cipher.index(name),
        dedupe_index=cipher.index(message_id),
    )


async def routed(
    rt: Runtime, tenant_id: TenantId, destination_id: DestinationId, count: int
) -> tuple[list[Delivery], dict[EventId, Loaded]]:
    """`count` track events stored and routed to one destination, as the router does:
    their deliveries (leased to this process) and the plaintext the router hands over."""
    cipher = await rt.envelope.cipher(tenant_id)
    events, plaintext = [], {}
    for n in range(count):
        meta = track_meta(cipher, tenant_id, "src", "E", f"m-{n}")
        body = EventBody(
            name="E", message_id=f"m-{n}", payload=msgspec.json.encode({"type": "track", "n": n})
        )
        ciphertext = cipher.encrypt(msgspec.msgpack.encode(body), meta.id.encode())
        events.append(RoutedEvent(meta, ciphertext, (destination_id,)))
        plaintext[meta.id] = Loaded(body=body, kind="segment", received_at_ms=now_ms())
    deliveries = await rt.store.events.record_routed(
        events, now_ms=now_ms(), dedupe_window_ms=60_000, lease_ms=60_000
    )
    return deliveries, plaintext
