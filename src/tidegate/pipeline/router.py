"""The router: reads the log, keeps each event once, fans it out to matching destinations.

Per log batch: one store transaction records the kept events and their deliveries
(deduplication included), then the log offset is committed and the deliveries go
straight to the dispatcher, so the first attempt does not wait for a store poll.
A crash between the store write and the offset commit re-reads the batch; the
store recognises the event ids and creates nothing twice.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import msgspec
import structlog

from tidegate.errors import DecryptionFailed, ValidationFailed
from tidegate.eventlog import Batch
from tidegate.ids import now_ms
from tidegate.model import Destination, EventBody, EventId, LogEntry, TenantId
from tidegate.pipeline.deliver import Dispatcher, Loaded
from tidegate.pipeline.transform import Filter
from tidegate.runtime import Runtime
from tidegate.store import RoutedEvent

log = structlog.get_logger(__name__)
_decode_entry = msgspec.msgpack.Decoder(LogEntry).decode
_decode_body = msgspec.msgpack.Decoder(EventBody).decode
LEASE_FLOOR_MS = 60_000


def lease_ms(delivery_timeout_s: float) -> int:
    """How long a claimed delivery stays with its worker: longer than any attempt can take
    (two timeouts and a margin), so no other worker sends it while it is in flight."""
    return max(LEASE_FLOOR_MS, int((2 * delivery_timeout_s + 30) * 1000))


class Router:
    def __init__(self, runtime: Runtime, dispatcher: Dispatcher) -> None:
        self._rt = runtime
        self._dispatcher = dispatcher
        self._filters: dict[str, Filter | None] = {}

    async def run(self) -> None:
        async for batch in self._rt.log.consume(self._rt.topic, "router"):
            await self.route(batch)

    async def route(self, batch: Batch) -> None:
        entries = []
        for record in batch.records:
            try:
                entries.append(_decode_entry(record.value))
            except msgspec.DecodeError:
                log.error("router.undecodable_record", offset=record.offset)
        by_tenant: dict[TenantId, list[Destination]] = defaultdict(list)
        tenants = list({e.meta.tenant_id for e in entries})
        for destination in await self._rt.store.destinations.enabled_destinations(tenants):
            by_tenant[destination.tenant_id].append(destination)
        routed: list[RoutedEvent] = []
        loaded: dict[EventId, Loaded] = {}
        for entry in entries:
            selected: tuple[Any, ...] = ()
            candidates = by_tenant.get(entry.meta.tenant_id)
            if candidates:
                try:
                    plain = await self._rt.envelope.decrypt(
                        entry.meta.tenant_id, entry.ciphertext, entry.meta.id.encode()
                    )
                    body = _decode_body(plain)
                except DecryptionFailed:
                    log.error("event.undecryptable", event_id=entry.meta.id)
                    continue
                selected = self._select(candidates, body)
                loaded[entry.meta.id] = Loaded(
                    body=body, kind=entry.meta.kind, received_at_ms=entry.meta.received_at_ms
                )
            routed.append(
                RoutedEvent(meta=entry.meta, ciphertext=entry.ciphertext, destination_ids=selected)
            )
        deliveries = await self._rt.store.events.record_routed(
            routed,
            now_ms=now_ms(),
            dedupe_window_ms=int(self._rt.settings.dedupe_window_s * 1000),
            lease_ms=lease_ms(self._rt.settings.delivery_timeout_s),
        )
        self._dispatcher.submit(deliveries, loaded)
        await self._rt.log.commit(batch)

    def _select(self, candidates: list[Destination], body: EventBody) -> tuple[Any, ...]:
        document: Any = None
        chosen = []
        for destination in candidates:
            if destination.filter:
                compiled = self._filter(destination.filter)
                if compiled is None:
                    continue
                if document is None:
                    document = msgspec.json.decode(body.payload)
                if not compiled.matches(document):
                    continue
            chosen.append(destination.id)
        return tuple(chosen)

    def _filter(self, expression: str) -> Filter | None:
        if expression not in self._filters:
            try:
                self._filters[expression] = Filter.compile(expression)
            except ValidationFailed:
                log.error("router.invalid_stored_filter")
                self._filters[expression] = None
        return self._filters[expression]
