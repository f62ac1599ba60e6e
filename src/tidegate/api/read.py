"""The tenant-scoped read and replay API under /v1.

Every handler takes the tenant from the API key and passes it to the store, which
scopes every query by it: another tenant's id is a plain 404.
"""

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query

from tidegate.admin import create_destination as create_destination_op
from tidegate.admin import create_snowflake_destination, replay_targets
from tidegate.api.audit import AccessAudit
from tidegate.api.auth import Authenticator, Caller
from tidegate.api.views import (
    DeliveryOut,
    DeliveryPage,
    DestinationCreated,
    DestinationIn,
    DestinationOut,
    EventOut,
    EventPage,
    ReplayOut,
    ReplayRange,
    UsageOut,
    decode_cursor,
    decrypt_event,
    delivery_out,
    destination_out,
    encode_cursor,
    iso,
    parse_time,
)
from tidegate.errors import InvalidRequest, NotFound
from tidegate.ids import now_ms
from tidegate.model import (
    Attempt,
    DeliveryId,
    DestinationId,
    EventId,
    Tenant,
)
from tidegate.runtime import Runtime
from tidegate.store import DeliveryQuery, EventQuery, StoredEvent


def build_read_router(
    runtime: Runtime, auth: Authenticator, access: AccessAudit, wake_worker: Any
) -> APIRouter:
    router = APIRouter(prefix="/v1")
    store = runtime.store
    Need_destinations_read = Annotated[Caller, Depends(auth.require("destinations:read"))]
    Need_destinations_write = Annotated[Caller, Depends(auth.require("destinations:write"))]
    Need_events_read = Annotated[Caller, Depends(auth.require("events:read"))]
    Need_payload_read = Annotated[Caller, Depends(auth.require("payload:read"))]
    Need_replay_execute = Annotated[Caller, Depends(auth.require("replay:execute"))]
    Need_usage_read = Annotated[Caller, Depends(auth.require("usage:read"))]

    async def event_out(tenant: Tenant, stored: StoredEvent, *, with_payload: bool) -> EventOut:
        return await decrypt_event(runtime, stored, with_payload=with_payload)

    @router.get("/events", response_model=EventPage, tags=["events"])
    async def list_events(
        caller: Need_events_read,
        type: str | None = None,
        name: str | None = None,
        since: str | None = None,
        until: str | None = None,
        cursor: str | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> EventPage:
        """Events newest first, without payloads; filter by type, name and time."""
        tenant = caller.tenant
        name_index = (await runtime.envelope.cipher(tenant.id)).index(name) if name else None
        query = EventQuery(
            type=type,
            name_index=name_index,
            since_ms=parse_time(since, "since"),
            until_ms=parse_time(until, "until"),
            after_id=_event_cursor(cursor),
            limit=limit,
        )
        rows = await store.events.list_events(tenant.id, query)
        data = [await event_out(tenant, r, with_payload=False) for r in rows]
        nxt = encode_cursor(rows[-1].meta.id) if len(rows) == limit else None
        await access.allowed(caller, "events.list", None)
        return EventPage(data=data, next_cursor=nxt)

    @router.get("/events/{event_id}", response_model=EventOut, tags=["events"])
    async def get_event(caller: Need_payload_read, event_id: str) -> EventOut:
        """One event with its decrypted payload."""
        tenant = caller.tenant
        stored = await store.events.get_event(tenant.id, EventId(event_id))
        if stored is None:
            raise NotFound(f"no event {event_id}")
        out = await event_out(tenant, stored, with_payload=True)
        await access.allowed(caller, "event.payload.read", event_id)
        return out

    @router.get("/events/{event_id}/deliveries", response_model=list[DeliveryOut], tags=["events"])
    async def event_deliveries(caller: Need_events_read, event_id: str) -> list[DeliveryOut]:
        """Every delivery of the event, with every attempt."""
        tenant = caller.tenant
        if await store.events.get_event(tenant.id, EventId(event_id)) is None:
            raise NotFound(f"no event {event_id}")
        rows = await store.deliveries.list_deliveries(
            tenant.id, DeliveryQuery(event_id=EventId(event_id), limit=500)
        )
        attempts = await store.deliveries.list_attempts(tenant.id, [d.id for d in rows])
        by_delivery: dict[str, list[Attempt]] = {d.id: [] for d in rows}
        for a in attempts:
            by_delivery[a.delivery_id].append(a)
        await access.allowed(caller, "event.attempts.read", event_id)
        return [delivery_out(d, by_delivery[d.id]) for d in rows]

    @router.post(
        "/events/{event_id}/replay", response_model=ReplayOut, status_code=202, tags=["replay"]
    )
    async def replay_event(
        caller: Need_replay_execute, event_id: str, destination_id: str | None = None
    ) -> ReplayOut:
        """Deliver the event again (new webhook-ids) to one or every enabled destination."""
        tenant = caller.tenant
        if await store.events.get_event(tenant.id, EventId(event_id)) is None:
            raise NotFound(f"no event {event_id}")
        targets = await replay_targets(runtime, tenant.id, destination_id)
        count = await store.deliveries.replay_events(
            tenant.id, event_ids=[EventId(event_id)], destination_ids=targets, now_ms=now_ms()
        )
        wake_worker()
        await access.allowed(caller, "replay.event", event_id, detail=f"{count} deliveries")
        return ReplayOut(replayed=count)

    @router.get("/deliveries", response_model=DeliveryPage, tags=["deliveries"])
    async def list_deliveries(
        caller: Need_events_read,
        status: Literal["pending", "succeeded", "dead"] | None = None,
        destination_id: str | None = None,
        cursor: str | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> DeliveryPage:
        tenant = caller.tenant
        rows = await store.deliveries.list_deliveries(
            tenant.id,
            DeliveryQuery(
                status=status,
                destination_id=DestinationId(destination_id) if destination_id else None,
                after_id=_delivery_cursor(cursor),
                limit=limit,
            ),
        )
        nxt = encode_cursor(rows[-1].id) if len(rows) == limit else None
        await access.allowed(caller, "dead_letters.list" if status == "dead" else "deliveries.list")
        return DeliveryPage(data=[delivery_out(d) for d in rows], next_cursor=nxt)

    @router.get("/dead-letters", response_model=DeliveryPage, tags=["deliveries"])
    async def dead_letters(
        caller: Need_events_read,
        destination_id: str | None = None,
        cursor: str | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> DeliveryPage:
        """Deliveries that exhausted their retry schedule (or whose destination went away)."""
        return await list_deliveries(caller, "dead", destination_id, cursor, limit)

    @router.post(
        "/destinations", response_model=DestinationCreated, status_code=201, tags=["destinations"]
    )
    async def create_destination(
        caller: Need_destinations_write, body: DestinationIn
    ) -> DestinationCreated:
        """Create a destination; a webhook's response carries its signing secret, once.

        A webhook's URL is checked against the SSRF rules after DNS resolution (422 if
        refused); filter, transform and retry schedule are validated (422 with the
        reason). A snowflake destination loads one row per event into its table, in
        micro-batches; its account must be in the tenant's region (422 if not).
        """
        tenant = caller.tenant
        if body.snowflake is not None:
            created = await create_snowflake_destination(
                runtime,
                tenant.id,
                config=body.snowflake.config(),
                private_key_pem=body.snowflake.private_key,
                name=body.name,
                filter_expression=body.filter,
                transform=body.transform,
                retry_schedule=body.retry_schedule,
            )
            await access.allowed(caller, "destination.create", created.id)
            return DestinationCreated(**destination_out(created).model_dump(), secret=None)
        if body.url is None:  # the model's validator already refused this
            raise InvalidRequest("a webhook destination needs a url")
        destination, secret = await create_destination_op(
            runtime,
            tenant.id,
            url=body.url,
            name=body.name,
            filter_expression=body.filter,
            transform=body.transform,
            retry_schedule=body.retry_schedule,
            retry_4xx=body.retry_4xx,
            timeout_s=body.timeout_s,
        )
        await access.allowed(caller, "destination.create", destination.id)
        return DestinationCreated(**destination_out(destination).model_dump(), secret=secret)

    @router.get("/destinations", response_model=list[DestinationOut], tags=["destinations"])
    async def list_destinations(caller: Need_destinations_read) -> list[DestinationOut]:
        tenant = caller.tenant
        rows = await store.destinations.list_destinations(tenant.id)
        await access.allowed(caller, "destinations.list")
        return [destination_out(d) for d in rows]

    @router.get(
        "/destinations/{destination_id}", response_model=DestinationOut, tags=["destinations"]
    )
    async def get_destination(
        caller: Need_destinations_read, destination_id: str
    ) -> DestinationOut:
        tenant = caller.tenant
        found = await store.destinations.get_destination(tenant.id, DestinationId(destination_id))
        if found is None:
            raise NotFound(f"no destination {destination_id}")
        await access.allowed(caller, "destination.read", destination_id)
        return destination_out(found)

    @router.post(
        "/destinations/{destination_id}/replay",
        response_model=ReplayOut,
        status_code=202,
        tags=["replay"],
    )
    async def replay_range(
        caller: Need_replay_execute, destination_id: str, body: ReplayRange
    ) -> ReplayOut:
        """Deliver every event received in [since, until) to this destination again."""
        tenant = caller.tenant
        targets = await replay_targets(runtime, tenant.id, destination_id)
        count = await store.deliveries.replay_events(
            tenant.id,
            since_ms=parse_time(body.since, "since"),
            until_ms=parse_time(body.until, "until"),
            destination_ids=targets,
            now_ms=now_ms(),
        )
        wake_worker()
        await access.allowed(caller, "replay.range", destination_id, detail=f"{count} deliveries")
        return ReplayOut(replayed=count)

    @router.post(
        "/destinations/{destination_id}/dead-letters/replay",
        response_model=ReplayOut,
        status_code=202,
        tags=["replay"],
    )
    async def replay_dead(caller: Need_replay_execute, destination_id: str) -> ReplayOut:
        """Every dead letter of the destination goes back on the schedule (same webhook-id)."""
        tenant = caller.tenant
        (target,) = await replay_targets(runtime, tenant.id, destination_id)
        count = await store.deliveries.replay_dead_letters(tenant.id, target, now_ms=now_ms())
        wake_worker()
        await access.allowed(
            caller, "replay.dead_letters", destination_id, detail=f"{count} deliveries"
        )
        return ReplayOut(replayed=count)

    @router.get("/usage", response_model=list[UsageOut], tags=["usage"])
    async def usage(
        caller: Need_usage_read, since: str | None = None, until: str | None = None
    ) -> list[UsageOut]:
        """Hourly meters of the tenant: events, bytes, deliveries, dead letters."""
        tenant = caller.tenant
        rows = await store.usage.usage_report(
            tenant.id, since_ms=parse_time(since, "since"), until_ms=parse_time(until, "until")
        )
        await access.allowed(caller, "usage.read")
        return [UsageOut(hour=iso(r.hour_ms), meter=r.meter, value=r.value) for r in rows]

    return router


def _event_cursor(cursor: str | None) -> EventId | None:
    raw = decode_cursor(cursor)
    return EventId(raw) if raw else None


def _delivery_cursor(cursor: str | None) -> DeliveryId | None:
    raw = decode_cursor(cursor)
    return DeliveryId(raw) if raw else None


__all__ = ["build_read_router", "decrypt_event", "delivery_out", "iso", "parse_time"]
