"""The dispatcher: runs delivery attempts in per-destination lanes, applies the outcome rules.

No head-of-line blocking: each destination has its own lane with a concurrency cap,
so a hanging or failing endpoint holds only its own slots; retries leave the lane
and come back through the store when they fall due.

Outcome rules: 2xx succeeds; 410 disables the destination and dead-letters what it
had pending; 3xx, 429, 5xx, timeouts and connection errors retry on the schedule
(honouring Retry-After); other 4xx retry too unless the destination says otherwise.
When the schedule is exhausted the delivery is a dead letter.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
import structlog

from tidegate import telemetry
from tidegate.batching import GroupWriter
from tidegate.destinations.base import Loader, Outcome, Sender, WarehouseRow
from tidegate.errors import BackendUnavailable, DecryptionFailed, ValidationFailed
from tidegate.ids import new_attempt_id, now_ms
from tidegate.metering import Meter
from tidegate.model import (
    Attempt,
    AttemptOutcome,
    Delivery,
    DeliveryId,
    DeliveryStatus,
    Destination,
    DestinationId,
    DestinationKind,
    DestinationStatus,
    EventBody,
    EventId,
    TenantId,
)
from tidegate.pipeline.breaker import CircuitBreaker
from tidegate.pipeline.retry import RetrySchedule
from tidegate.pipeline.transform import Transform
from tidegate.runtime import Runtime
from tidegate.settings import Settings
from tidegate.store import AttemptResult, StoredEvent

log = structlog.get_logger(__name__)
_decode_body = msgspec.msgpack.Decoder(EventBody).decode
_encode_json = msgspec.json.Encoder().encode
_DESTINATION_TTL_S = 2.0
_OUTCOME_LINGER_S = 0.005
# Outcomes waiting for the store beyond which an attempt keeps its lane slot until its own
# outcome is recorded: attempts then go no faster than the store records them, instead of
# piling up in memory when the store writer falls behind (an overloaded machine).
_MAX_UNRECORDED = 1_000
# The attempts counter of each outcome, looked up once rather than per attempt.
_ATTEMPTS = {outcome: telemetry.ATTEMPTS.labels(outcome.value) for outcome in AttemptOutcome}


class _CachedDestination(msgspec.Struct):
    destination: Destination
    secret: str
    schedule: RetrySchedule
    transform: Transform | None
    expires: float
    # The secret a rotation replaced, signing beside `secret` until `previous_until_ms`.
    previous_secret: str | None = None
    previous_until_ms: int = 0
    loader: Loader | None = None  # a warehouse destination's batching loader

    def signing_secrets(self, now: int) -> list[str]:
        """The current secret, and the previous one while its rotation overlap lasts."""
        if self.previous_secret is not None and now < self.previous_until_ms:
            return [self.secret, self.previous_secret]
        return [self.secret]


class Loaded(msgspec.Struct, frozen=True):
    """A decrypted event with what rendering and latency need."""

    body: EventBody
    kind: str
    received_at_ms: int


def _is_distress(outcome: Outcome) -> bool:
    """An endpoint in trouble, or out of reach: no answer (a timeout, a connection error),
    a 5xx or a 429. The circuit breaker counts these, and a lane's limit is cut on them."""
    code = outcome.status_code
    return code is None or code >= 500 or code == 429


class Lane:
    """One destination's queue and in-flight count."""

    __slots__ = (
        "backlog",
        "breaker",
        "cap",
        "handing_back",
        "in_flight",
        "is_closed_to_claims",
        "last_cut",
        "limit",
        "spilled",
        "spilling",
    )

    def __init__(self, breaker: CircuitBreaker, limit: int) -> None:
        self.backlog: deque[tuple[Delivery, Loaded | None]] = deque()
        self.in_flight = 0
        self.breaker = breaker
        # A webhook lane's in-flight limit, adapted to the endpoint (`Dispatcher._adapt`),
        # and when it was last cut: attempts already under way then do not cut it again.
        self.limit = float(limit)
        self.last_cut = 0.0
        # In-flight cap when not the per-destination default: a warehouse lane holds a
        # whole batch in flight, since its rows wait together for one load.
        self.cap: int | None = None
        # Over half its backlog cap when last looked at: the scheduler leaves it out.
        self.is_closed_to_claims = False
        # Since its backlog overflowed into the store: the router's new deliveries follow
        # the overflow there, and the lane is refilled from the store, oldest first, until
        # a claim finds none left (`Dispatcher.claimed_all`). Otherwise new deliveries
        # would keep a full lane full and the overflow would wait for the load to drop.
        self.spilling = False
        self.spilled = 0  # hand-backs so far
        self.handing_back = 0  # hand-backs not yet committed by the store


LoaderFactory = Callable[[Destination, str], Loader]


def open_loader(settings: Settings, destination: Destination, private_key_pem: str) -> Loader:
    """The batching loader of a warehouse destination; its driver is imported only here."""
    match destination.kind:
        case DestinationKind.SNOWFLAKE if destination.snowflake is not None:
            from tidegate.destinations.snowflake import SnowflakeLoader

            return SnowflakeLoader(
                destination.snowflake,
                private_key_pem,
                destination_id=destination.id,
                batch_rows=settings.snowflake_batch_rows,
                flush_interval_s=settings.snowflake_flush_interval_s,
                timeout_s=settings.snowflake_timeout_s,
            )
        case other:
            raise ValueError(f"destination {destination.id} of kind {other} has no loader")


class _Slot:
    """One of a lane's in-flight places, given back once: when the endpoint has
    answered, or when the attempt ends some other way."""

    __slots__ = ("_dispatcher", "_held", "_lane")

    def __init__(self, dispatcher: Dispatcher, lane: Lane) -> None:
        self._dispatcher = dispatcher
        self._lane = lane
        self._held = True

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        self._lane.in_flight -= 1
        self._dispatcher.refill(self._lane)


class Dispatcher:
    def __init__(
        self,
        runtime: Runtime,
        sender: Sender,
        *,
        on_recovered: Callable[[], None],
        loader_factory: LoaderFactory | None = None,
    ) -> None:
        self._rt = runtime
        self._sender = sender
        self._open_loader: LoaderFactory = loader_factory or (
            lambda destination, key: open_loader(runtime.settings, destination, key)
        )
        # One loader per warehouse destination, kept across cache refreshes while its
        # config and key stay the same; a change swaps in a new one (new connection).
        self._loaders: dict[DestinationId, tuple[Any, str, Loader]] = {}
        self._on_recovered = on_recovered
        self._lanes: dict[DestinationId, Lane] = {}
        # A lane's backlog cap (TIDEGATE_LANE_BACKLOG), and the most it may hold for the
        # scheduler to claim for it: a lane fuller than that would hand claims straight
        # back, and claiming them again and again while it stays full is store work taken
        # from delivery.
        self._max_backlog = runtime.settings.lane_backlog
        # A webhook lane's in-flight limit moves between these two (`_adapt`).
        self._fewest = runtime.settings.destination_concurrency
        self._most = max(self._fewest, runtime.settings.destination_concurrency_max)
        self._claimable_backlog = self._max_backlog // 2
        self._destinations: dict[DestinationId, _CachedDestination] = {}
        self._known: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        # Recording an outcome holds up no one (the lane slot is free once the endpoint
        # answers), so a trickle of outcomes waits a few milliseconds to share a commit.
        self._attempts: GroupWriter[AttemptResult] = GroupWriter(
            lambda batch: runtime.store.deliveries.record_attempts(batch, now_ms=now_ms()),
            linger_s=_OUTCOME_LINGER_S,
        )
        self._stopping = False

    def is_known(self, delivery_id: str) -> bool:
        return delivery_id in self._known

    def full_destinations(self) -> list[DestinationId]:
        """Destinations whose lane has no room for claimed retries (more than half its
        backlog cap queued); the scheduler is woken once such a lane drains."""
        full = []
        for destination_id, lane in self._lanes.items():
            lane.is_closed_to_claims = len(lane.backlog) > self._claimable_backlog
            if lane.is_closed_to_claims:
                full.append(destination_id)
        return full

    def spill_marks(self) -> dict[DestinationId, int]:
        """Before a claim: the spilling lanes whose hand-backs are all in the store (so the
        claim can see them), each with its count of hand-backs so far."""
        return {
            destination_id: lane.spilled
            for destination_id, lane in self._lanes.items()
            if lane.spilling and not lane.handing_back
        }

    def claimed_all(
        self, marks: dict[DestinationId, int], exclude: Iterable[DestinationId]
    ) -> None:
        """The scheduler's last claim, made after `marks` was taken, took every due
        delivery of the lanes not in `exclude`: a lane marked then, and that has handed
        nothing back since, has nothing left in the store and takes the router's
        deliveries again."""
        left_out = set(exclude)
        for destination_id, spilled in marks.items():
            lane = self._lanes.get(destination_id)
            if lane is not None and lane.spilled == spilled and destination_id not in left_out:
                lane.spilling = False

    def submit(
        self,
        deliveries: Iterable[Delivery],
        plaintext: dict[EventId, Loaded] | None = None,
        *,
        claimed: bool = False,
    ) -> None:
        """Queue deliveries (already leased to this worker) on their lanes.

        `plaintext` holds the decrypted events the router already has, so the first
        attempt reads nothing back from the store. A lane over its backlog cap hands
        the overflow back to the store, due at once; until the store has none of that
        lane's due deliveries left, the router's new ones (not `claimed`) follow them
        there, so the lane's deliveries go out oldest first.
        """
        overflow: list[DeliveryId] = []
        overflowed: dict[DestinationId, Lane] = {}
        touched: dict[DestinationId, Lane] = {}
        for delivery in deliveries:
            if self._stopping or delivery.id in self._known:
                continue
            lane = self._lane(delivery.destination_id)
            if len(lane.backlog) >= self._max_backlog or (lane.spilling and not claimed):
                lane.spilling = True
                overflow.append(delivery.id)
                overflowed[delivery.destination_id] = lane
                continue
            self._known.add(delivery.id)
            body = plaintext.get(delivery.event_id) if plaintext else None
            lane.backlog.append((delivery, body))
            touched[delivery.destination_id] = lane
        for lane in touched.values():
            self._pump(lane)
        if overflow:
            lanes = list(overflowed.values())
            for lane in lanes:
                lane.spilled += 1
                lane.handing_back += 1
            task = asyncio.create_task(self._hand_back(overflow, lanes))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _hand_back(self, overflow: list[DeliveryId], lanes: list[Lane]) -> None:
        """Make lane overflow due again now, behind what was handed back before it (the
        scheduler claims the earliest due first, and leaves out lanes too full to take
        them); if the store refuses, the deliveries stay leased to this worker and come
        back when the lease lapses."""
        telemetry.SPILLED.inc(len(overflow))
        try:
            await self._rt.store.deliveries.defer(overflow, now_ms())
        except BackendUnavailable as exc:
            log.warning("dispatcher.hand_back_failed", deliveries=len(overflow), error=exc.detail)
        finally:
            for lane in lanes:
                lane.handing_back -= 1

    def _lane(self, destination_id: DestinationId) -> Lane:
        lane = self._lanes.get(destination_id)
        if lane is None:
            s = self._rt.settings
            breaker = CircuitBreaker(
                failures_to_open=s.breaker_failures, cooldown_s=s.breaker_cooldown_s
            )
            lane = Lane(breaker, self._fewest)
            self._lanes[destination_id] = lane
        return lane

    def refill(self, lane: Lane) -> None:
        if not self._stopping:
            self._pump(lane)

    def _pump(self, lane: Lane) -> None:
        cap = lane.cap or int(lane.limit)
        while lane.backlog and lane.in_flight < cap:
            delivery, body = lane.backlog.popleft()
            lane.in_flight += 1
            task = asyncio.create_task(self._run(lane, delivery, body))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if lane.is_closed_to_claims and len(lane.backlog) <= self._claimable_backlog // 2:
            lane.is_closed_to_claims = False
            self._on_recovered()  # the scheduler claims this lane's retries again

    async def _run(self, lane: Lane, delivery: Delivery, body: Loaded | None) -> None:
        slot = _Slot(self, lane)
        try:
            await self._attempt(lane, delivery, body, slot)
        except Exception:
            log.exception("delivery.crashed", delivery_id=delivery.id)
        finally:
            slot.release()
            self._known.discard(delivery.id)

    async def _attempt(
        self, lane: Lane, delivery: Delivery, body: Loaded | None, slot: _Slot
    ) -> None:
        cached = await self._destination(delivery.tenant_id, delivery.destination_id)
        now = now_ms()
        if cached is None or cached.destination.status is not DestinationStatus.ENABLED:
            reason = "destination deleted" if cached is None else "destination disabled"
            await self._rt.store.deliveries.dead_letter_pending(
                delivery.tenant_id, delivery.destination_id, reason, now_ms=now
            )
            return
        if not lane.breaker.allow():
            await self._rt.store.deliveries.defer(
                [delivery.id], now + int(lane.breaker.retry_in_s() * 1000)
            )
            return
        if body is None:
            body = await self._load_body(delivery.tenant_id, delivery.event_id)
            if body is None:
                await self._finish(
                    delivery, Outcome(error="event no longer stored"), cached, final=True
                )
                return
        if _is_first_routed_attempt(delivery, body):
            telemetry.LATENCY.observe(max(0.0, (now_ms() - body.received_at_ms) / 1000))
        try:
            content, content_type = self._render(cached, body)
        except ValidationFailed as exc:
            await self._finish(
                delivery, Outcome(error=f"transform failed: {exc.detail}"), cached, final=True
            )
            return
        if cached.loader is not None:
            if lane.cap is None:
                lane.cap = max(self._rt.settings.snowflake_batch_rows, 1)
                self._pump(lane)
            outcome = await self._load(cached.loader, delivery, body, content)
            if outcome.rejected:
                # The warehouse answered and refused this row: it is up, and the row is
                # a dead letter now whatever the schedule (a retry would be refused too).
                lane.breaker.record_alive()
                await self._finish(delivery, outcome, cached, final=True)
                return
        else:
            started = time.monotonic()
            outcome = await self._sender.send(
                cached.destination,
                secrets=cached.signing_secrets(now_ms()),
                webhook_id=delivery.id,
                body=content,
                content_type=content_type,
            )
            telemetry.ATTEMPT_DURATION.observe(outcome.duration_ms / 1000)
            self._adapt(lane, outcome, started)
        if outcome.is_success:
            if lane.breaker.record_success():
                resumed = await self._rt.store.deliveries.resume_destination(
                    delivery.tenant_id, delivery.destination_id, now_ms=now_ms()
                )
                log.info(
                    "destination.recovered", destination_id=delivery.destination_id, resumed=resumed
                )
                self._on_recovered()
        elif _is_distress(outcome):
            lane.breaker.record_failure()
        else:
            lane.breaker.record_alive()  # a 3xx/4xx answer: the endpoint is up
        # The endpoint is done with this delivery: its slot goes to the next one while
        # the outcome is recorded (the lease keeps the delivery from any other worker),
        # unless the store is that far behind (`_run` gives the slot back after).
        if self._attempts.waiting < _MAX_UNRECORDED:
            slot.release()
        await self._finish(delivery, outcome, cached, final=False)

    def _adapt(self, lane: Lane, outcome: Outcome, started: float) -> None:
        """Additive increase, multiplicative decrease, as TCP does for its window: a
        webhook lane's limit grows by one per limit's worth of answered attempts while
        deliveries queue for it, and halves (not below the configured start) when the
        endpoint shows distress: a 429, a 5xx, a timeout or a connection error. Attempts
        under way when it was cut belong to the same episode and do not cut it again. So
        an endpoint that keeps up gets more in flight than 16 (one 50 ms away: 320/s at
        16, 1,280/s at 64), and one that struggles is back at the start at once."""
        if _is_distress(outcome):
            if lane.limit > self._fewest and started >= lane.last_cut:
                lane.limit = max(float(self._fewest), lane.limit / 2)
                lane.last_cut = time.monotonic()
                telemetry.LANE_CUTS.inc()
        elif lane.backlog and lane.limit < self._most:
            lane.limit = min(float(self._most), lane.limit + 1 / lane.limit)

    async def _load(
        self, loader: Loader, delivery: Delivery, loaded: Loaded, content: bytes
    ) -> Outcome:
        """Load the rendered event as one warehouse row (waiting for its batch)."""
        # The destination's current loader: settings changed since `loader` was looked
        # up (an await ago) mean it is closing, and the row belongs to the new one.
        kept = self._loaders.get(delivery.destination_id)
        current = kept[2] if kept is not None else loader
        outcome = await current.load(warehouse_row(delivery, loaded, content))
        if outcome.is_success:
            meter = self._rt.meter
            meter.add(delivery.tenant_id, Meter.WAREHOUSE_ROWS)
            meter.add(delivery.tenant_id, Meter.WAREHOUSE_BYTES, len(content))
            if delivery.replay_of is None:
                telemetry.WAREHOUSE_FRESHNESS.labels(delivery.destination_id).observe(
                    max(0.0, (now_ms() - loaded.received_at_ms) / 1000)
                )
        return outcome

    def _render(self, cached: _CachedDestination, loaded: Loaded) -> tuple[bytes, str]:
        content_type = (
            "application/cloudevents+json" if loaded.kind == "cloudevents" else "application/json"
        )
        if cached.transform is None:
            return loaded.body.payload, content_type
        document = msgspec.json.decode(loaded.body.payload)
        return _encode_json(cached.transform.apply(document)), content_type

    async def _finish(
        self, delivery: Delivery, outcome: Outcome, cached: _CachedDestination, *, final: bool
    ) -> None:
        now = now_ms()
        attempts_made = delivery.attempts + 1
        status = DeliveryStatus.PENDING
        next_at: int | None = None
        code = outcome.status_code
        gone = code == 410
        if outcome.is_success:
            status = DeliveryStatus.SUCCEEDED
        elif (
            final
            or gone
            or (
                code is not None
                and 400 <= code < 500
                and code not in (408, 429)
                and not cached.destination.retry_4xx
            )
        ):
            status = DeliveryStatus.DEAD
        else:
            delay = cached.schedule.next_delay(attempts_made, retry_after_s=outcome.retry_after_s)
            if delay is None:
                status = DeliveryStatus.DEAD
            else:
                next_at = now + int(delay * 1000)
        attempt_outcome = (
            AttemptOutcome.SUCCEEDED
            if outcome.is_success
            else AttemptOutcome.BLOCKED
            if outcome.blocked
            else AttemptOutcome.FAILED
        )
        attempt = Attempt(
            id=new_attempt_id(),
            delivery_id=delivery.id,
            tenant_id=delivery.tenant_id,
            started_at_ms=now - int(outcome.duration_ms),
            duration_ms=round(outcome.duration_ms, 3),
            outcome=attempt_outcome,
            status_code=code,
            error=outcome.error,
        )
        await self._attempts.submit(
            AttemptResult(
                attempt=attempt,
                delivery_status=status.value,
                next_attempt_at_ms=next_at,
                last_error=outcome.error,
            )
        )
        self._meter(delivery.tenant_id, attempt_outcome, status)
        log.info(
            "delivery.attempted",
            delivery_id=delivery.id,
            tenant_id=delivery.tenant_id,
            destination_id=delivery.destination_id,
            event_id=delivery.event_id,
            attempt=attempts_made,
            outcome=attempt_outcome.value,
            status=code,
            duration_ms=attempt.duration_ms,
            next_attempt_at_ms=next_at,
            error=outcome.error,
        )
        if gone:
            await self._disable(cached.destination, "the endpoint answered 410 Gone")

    def _meter(self, tenant_id: TenantId, outcome: AttemptOutcome, status: DeliveryStatus) -> None:
        meter = self._rt.meter
        _ATTEMPTS[outcome].inc()
        meter.add(tenant_id, Meter.DELIVERIES_ATTEMPTED)
        if outcome is AttemptOutcome.SUCCEEDED:
            meter.add(tenant_id, Meter.DELIVERIES_SUCCEEDED)
        else:
            meter.add(tenant_id, Meter.DELIVERIES_FAILED)
        if status is DeliveryStatus.DEAD:
            telemetry.DEAD_LETTERS.inc()
            meter.add(tenant_id, Meter.DEAD_LETTERS)

    async def _disable(self, destination: Destination, reason: str) -> None:
        store = self._rt.store
        await store.destinations.set_destination_status(
            destination.tenant_id, destination.id, DestinationStatus.DISABLED, reason
        )
        moved = await store.deliveries.dead_letter_pending(
            destination.tenant_id, destination.id, reason, now_ms=now_ms()
        )
        self._destinations.pop(destination.id, None)
        log.warning(
            "destination.disabled",
            destination_id=destination.id,
            reason=reason,
            dead_lettered=moved,
        )

    async def _destination(
        self, tenant_id: TenantId, destination_id: DestinationId
    ) -> _CachedDestination | None:
        cached = self._destinations.get(destination_id)
        if cached is not None and cached.expires > time.monotonic():
            return cached
        destination = await self._rt.store.destinations.get_destination(tenant_id, destination_id)
        if destination is None:
            self._destinations.pop(destination_id, None)
            gone = self._loaders.pop(destination_id, None)
            if gone is not None:
                self._close_later(gone[2])
            return None
        purpose = b"secret:" + destination.id.encode()
        envelope = self._rt.envelope
        secret = (
            await envelope.decrypt(tenant_id, destination.secret_ciphertext, purpose)
        ).decode()
        previous = await self._rt.store.destinations.previous_secret(
            tenant_id, destination_id, now_ms=now_ms()
        )
        cached = _CachedDestination(
            destination=destination,
            secret=secret,
            schedule=RetrySchedule.parse(destination.retry_schedule or "default"),
            transform=Transform.compile(destination.transform) if destination.transform else None,
            expires=time.monotonic() + _DESTINATION_TTL_S,
        )
        if previous is not None:
            plain = await envelope.decrypt(tenant_id, previous.ciphertext, purpose)
            cached.previous_secret = plain.decode()
            cached.previous_until_ms = previous.expires_at_ms
        if destination.kind is not DestinationKind.WEBHOOK:
            cached.loader = self._loader(destination, secret)
        self._destinations[destination_id] = cached
        return cached

    def _loader(self, destination: Destination, key: str) -> Loader:
        """The destination's loader for these settings and key. Not async on purpose:
        no await between looking up and swapping, so concurrent refreshes agree on one
        loader and each row goes to exactly one."""
        kept = self._loaders.get(destination.id)
        config = destination.snowflake
        if kept is not None and kept[0] == config and kept[1] == key:
            return kept[2]
        loader = self._open_loader(destination, key)
        self._loaders[destination.id] = (config, key, loader)
        if kept is not None:
            log.info("loader.reconfigured", destination_id=destination.id)
            # The old loader still loads what it holds, under the settings those rows
            # were batched with (nothing lost; the MERGE on event_id adds no duplicate).
            self._close_later(kept[2])
        return loader

    def _close_later(self, loader: Loader) -> None:
        async def close() -> None:
            try:
                await loader.aclose()
            except Exception:
                log.exception("loader.close_failed")

        task = asyncio.create_task(close())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def load_bodies(self, deliveries: Sequence[Delivery]) -> dict[EventId, Loaded]:
        """The decrypted events of claimed deliveries, read from the store in one query per
        tenant (retries, replays, a backlog's recovery) rather than one per delivery. An
        event missing here (gone, undecryptable, or the store did not answer) is looked
        up again at its attempt, which ends the delivery if it is gone."""
        wanted: dict[TenantId, set[EventId]] = defaultdict(set)
        for delivery in deliveries:
            wanted[delivery.tenant_id].add(delivery.event_id)
        loaded: dict[EventId, Loaded] = {}
        for tenant_id, event_ids in wanted.items():
            try:
                found = await self._rt.store.events.get_events(tenant_id, list(event_ids))
            except BackendUnavailable as exc:
                log.warning("dispatcher.load_failed", events=len(event_ids), error=exc.detail)
                continue
            for stored in found:
                opened = await self._open(tenant_id, stored)
                if opened is not None:
                    loaded[stored.meta.id] = opened
        return loaded

    async def _load_body(self, tenant_id: TenantId, event_id: EventId) -> Loaded | None:
        stored = await self._rt.store.events.get_event(tenant_id, event_id)
        return None if stored is None else await self._open(tenant_id, stored)

    async def _open(self, tenant_id: TenantId, stored: StoredEvent) -> Loaded | None:
        event_id = stored.meta.id
        try:
            plain = await self._rt.envelope.decrypt(tenant_id, stored.ciphertext, event_id.encode())
            body = _decode_body(plain)
        except DecryptionFailed:
            log.error("event.undecryptable", event_id=event_id, tenant_id=tenant_id)
            return None
        return Loaded(body=body, kind=stored.meta.kind, received_at_ms=stored.meta.received_at_ms)

    async def drain(self, timeout_s: float) -> None:
        """Stop taking work; wait up to `timeout_s` for attempts in flight; return the rest."""
        self._stopping = True
        leftover = [d.id for lane in self._lanes.values() for d, _ in lane.backlog]
        for lane in self._lanes.values():
            lane.backlog.clear()
        if leftover:
            await self._rt.store.deliveries.release_leases(leftover)
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1)
        loaders, self._loaders = self._loaders, {}
        for _config, _key, loader in loaders.values():
            try:
                await loader.aclose()
            except Exception:
                log.exception("loader.close_failed")


def _is_first_routed_attempt(delivery: Delivery, loaded: Loaded) -> bool:
    """The first attempt of a delivery made by routing (not a replay): what the
    ingest-to-attempt latency metric measures."""
    return (
        delivery.attempts == 0
        and delivery.updated_at_ms == delivery.created_at_ms
        and delivery.created_at_ms - loaded.received_at_ms < 60_000
    )


def warehouse_row(delivery: Delivery, loaded: Loaded, content: bytes) -> WarehouseRow:
    """The warehouse row of a rendered event: columns read from the document as the
    destination receives it (after its transform), so a field it drops is not loaded."""
    document = msgspec.json.decode(content)
    fields: dict[str, Any] = document if isinstance(document, dict) else {}
    received = datetime.fromtimestamp(loaded.received_at_ms / 1000, UTC)
    return WarehouseRow(
        event_id=delivery.event_id,
        tenant_id=delivery.tenant_id,
        type=_text(fields.get("type")) or loaded.kind,
        event_name=loaded.body.name,
        user_id=_text(fields.get("userId")),
        anonymous_id=_text(fields.get("anonymousId")),
        message_id=loaded.body.message_id,
        sent_at=_iso_time(fields.get("sentAt") or fields.get("timestamp")),
        received_at=received.isoformat(timespec="milliseconds"),
        payload=msgspec.Raw(content),
    )


def _text(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _iso_time(value: object) -> str | None:
    """A client's timestamp as ISO 8601 UTC, or None when it is not one (the warehouse
    would refuse the whole batch over one malformed time)."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).isoformat(timespec="milliseconds")
