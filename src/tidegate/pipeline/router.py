"""The router: reads the log, keeps each event once, fans it out to matching destinations.

Per log batch: one store transaction records the kept events and their deliveries
(deduplication included), the deliveries go straight to the dispatcher, so the first
attempt does not wait for a store poll, and the log offsets are committed behind the
router, while it routes the next batch. A crash before the offsets are committed
re-reads those batches; the store recognises the event ids and creates nothing twice.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from typing import Any

import msgspec
import structlog

from tidegate import telemetry
from tidegate.errors import BackendUnavailable, DecryptionFailed, ValidationFailed
from tidegate.eventlog import Batch, EventLog, LogRecord
from tidegate.ids import now_ms
from tidegate.model import Destination, EventBody, EventId, LogEntry, TenantId, decode_record
from tidegate.pipeline.deliver import Dispatcher, Loaded
from tidegate.pipeline.transform import Filter
from tidegate.runtime import Runtime
from tidegate.store import RoutedEvent

log = structlog.get_logger(__name__)
_decode_body = msgspec.msgpack.Decoder(EventBody).decode
LEASE_FLOOR_MS = 60_000
ROUTE_EVENTS = 2_000  # events per store transaction, when a batch of records holds more
# After a batch of fewer records than this, the router pauses before reading the next,
# so at moderate rates it routes a few milliseconds' worth at a time rather than each
# request on its own: every batch is a store transaction, an offset commit and their
# fsyncs. At 1,200 events/s on the benchmark VM: process 0 at 0.51 of a core instead of
# 0.77-0.82, 620 fsyncs a second instead of 960-1,470, the delivery p99 unchanged.
_SMALL_BATCH = 50
_SMALL_BATCH_PAUSE_S = 0.003
# Once records come faster than this, a batch is small below twice as many records and
# the pause is longer, as a network card coalesces its interrupts by the packet rate:
# the busier the router, the more each batch's fixed cost is worth sharing, and a few
# more milliseconds of delivery latency matter least. At 4,000 events/s (benchmarks,
# fifteenth session) process 0 spent 175-183 µs of CPU per event against 183-193.
_BUSY_RECORDS_PER_S = 2_500
_BUSY_SMALL_BATCH = 100
_BUSY_PAUSE_S = 0.010
_RATE_WINDOW_S = 1.0  # the records' rate is measured over windows this long (at least)


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
        committer = _Committer(self._rt.log)
        pace = Pace()
        try:
            async for batch in self._rt.log.consume(self._rt.topic, "router"):
                await self.route(batch)
                committer.add(batch)
                pause = pace.pause_after(len(batch.records), time.monotonic())
                if pause:
                    await asyncio.sleep(pause)
        finally:
            await committer.flush()

    async def route(self, batch: Batch) -> None:
        """Record the batch's events and deliveries and hand them to the dispatcher; the
        caller commits the batch's offsets once this returns. A batch of many events goes
        to the store in several transactions: a crash between them re-reads the batch, and
        the store recognises what it already holds."""
        entries: list[LogEntry] = []
        for record in batch.records:
            try:
                entries += decode_record(record.value)
            except msgspec.DecodeError:
                log.error("router.undecodable_record", offset=record.offset)
                continue
        for start in range(0, len(entries), ROUTE_EVENTS):
            await self._route(entries[start : start + ROUTE_EVENTS])
        telemetry.ROUTED.inc(len(entries))

    async def _route(self, entries: list[LogEntry]) -> None:
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


class Pace:
    """How long the router pauses after a batch: not at all after a large one, a little
    after a small one, longer while records come at a busy rate (`_BUSY_RECORDS_PER_S`,
    measured over the last `_RATE_WINDOW_S` or so)."""

    __slots__ = ("_busy", "_records", "_since")

    def __init__(self) -> None:
        self._busy = False
        self._records = 0
        self._since: float | None = None

    def pause_after(self, records: int, now: float) -> float:
        if self._since is None:
            self._since = now
        self._records += records
        elapsed = now - self._since
        if elapsed >= _RATE_WINDOW_S:
            self._busy = self._records / elapsed >= _BUSY_RECORDS_PER_S
            self._records, self._since = 0, now
        if self._busy:
            return _BUSY_PAUSE_S if records < _BUSY_SMALL_BATCH else 0.0
        return _SMALL_BATCH_PAUSE_S if records < _SMALL_BATCH else 0.0


class _Committer:
    """Commits routed batches' offsets in order, one commit at a time, without holding
    up routing. Batches routed while a commit is in flight are merged into the next one
    (the highest offset of each partition), so a busy router writes one offset update
    per commit, not one per batch; an idle one commits each batch at once."""

    def __init__(self, log: EventLog) -> None:
        self._log = log
        self._topic = ""
        self._group = ""
        self._latest: dict[int, LogRecord] = {}
        self._task: asyncio.Task[None] | None = None

    def add(self, batch: Batch) -> None:
        if not batch.records:
            return
        self._topic, self._group = batch.topic, batch.group
        for record in batch.records:
            kept = self._latest.get(record.partition)
            if kept is None or record.offset > kept.offset:
                self._latest[record.partition] = record
        if self._task is None:
            self._task = asyncio.create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self._latest:
                records, self._latest = tuple(self._latest.values()), {}
                try:
                    await self._log.commit(Batch(self._topic, self._group, records))
                except BackendUnavailable as exc:
                    # The next commit covers these offsets; a restart before it re-reads
                    # them, and routing them again creates nothing twice.
                    log.warning("router.commit_failed", error=exc.detail)
        finally:
            self._task = None

    async def flush(self) -> None:
        """Wait for the commits under way (on shutdown: what was routed stays routed)."""
        task = self._task
        if task is not None:
            await asyncio.shield(task)
