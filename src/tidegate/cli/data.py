"""events, deliveries, replay, usage: reading and re-sending a tenant's data."""

from __future__ import annotations

from typing import Any

import click

from tidegate import admin
from tidegate.api.views import decrypt_event, delivery_out, iso, parse_time
from tidegate.cli.common import emit, json_option, record, run
from tidegate.errors import NotFound
from tidegate.ids import now_ms
from tidegate.model import DestinationId, EventId, TenantId
from tidegate.runtime import Runtime
from tidegate.store import DeliveryQuery, EventQuery

tenant_option = click.option("--tenant", required=True, help="Tenant id (every read is scoped).")


@click.group()
def events() -> None:
    """Read events (decrypted)."""


@events.command("get")
@click.argument("event_id")
@tenant_option
@json_option
def events_get(event_id: str, tenant: str, as_json: bool) -> None:
    """One event with its payload and its deliveries."""

    async def action(rt: Runtime) -> dict[str, Any]:
        stored = await rt.store.events.get_event(TenantId(tenant), EventId(event_id))
        if stored is None:
            raise NotFound(f"no event {event_id} for tenant {tenant}")
        event = (await decrypt_event(rt, stored, with_payload=True)).model_dump()
        rows = await rt.store.deliveries.list_deliveries(
            TenantId(tenant), DeliveryQuery(event_id=EventId(event_id), limit=500)
        )
        attempts = await rt.store.deliveries.list_attempts(TenantId(tenant), [d.id for d in rows])
        event["deliveries"] = [
            delivery_out(d, [a for a in attempts if a.delivery_id == d.id]).model_dump()
            for d in rows
        ]
        await record(rt, "event.payload.read", tenant, event_id)
        return event

    data = run(action)
    emit(data, True, "")  # an event is a document: JSON either way
    del as_json


@events.command("list")
@tenant_option
@click.option("--type", "event_type")
@click.option("--since")
@click.option("--until")
@click.option("--limit", type=int, default=20, show_default=True)
@json_option
def events_list(
    tenant: str,
    event_type: str | None,
    since: str | None,
    until: str | None,
    limit: int,
    as_json: bool,
) -> None:
    async def action(rt: Runtime) -> list[dict[str, Any]]:
        query = EventQuery(
            type=event_type,
            since_ms=parse_time(since, "--since"),
            until_ms=parse_time(until, "--until"),
            limit=limit,
        )
        rows = await rt.store.events.list_events(TenantId(tenant), query)
        await record(rt, "events.list", tenant, None)
        return [(await decrypt_event(rt, r, with_payload=False)).model_dump() for r in rows]

    data = run(action)
    emit(
        data,
        as_json,
        lambda: "\n".join(
            f"{e['id']}  {e['received_at']}  {e['type']}  {e['name'] or ''}" for e in data
        ),
    )


@click.group()
def deliveries() -> None:
    """Delivery status and attempts."""


@deliveries.command("list")
@tenant_option
@click.option("--status", type=click.Choice(["pending", "succeeded", "dead"]))
@click.option("--event", "event_id")
@click.option("--destination", "destination_id")
@click.option("--attempts", "with_attempts", is_flag=True, help="Include every attempt.")
@click.option("--limit", type=int, default=50, show_default=True)
@json_option
def deliveries_list(
    tenant: str,
    status: str | None,
    event_id: str | None,
    destination_id: str | None,
    with_attempts: bool,
    limit: int,
    as_json: bool,
) -> None:
    async def action(rt: Runtime) -> list[dict[str, Any]]:
        query = DeliveryQuery(
            status=status,
            event_id=EventId(event_id) if event_id else None,
            destination_id=DestinationId(destination_id) if destination_id else None,
            limit=limit,
        )
        rows = await rt.store.deliveries.list_deliveries(TenantId(tenant), query)
        attempts = (
            await rt.store.deliveries.list_attempts(TenantId(tenant), [d.id for d in rows])
            if with_attempts
            else []
        )
        return [
            delivery_out(
                d, [a for a in attempts if a.delivery_id == d.id] if with_attempts else None
            ).model_dump(exclude_none=not with_attempts)
            for d in rows
        ]

    data = run(action)
    emit(
        data,
        as_json,
        lambda: "\n".join(
            f"{d['id']}  {d['status']:<9}  attempts={d['attempts']}  event={d['event_id']}"
            f"  {d.get('last_error') or ''}"
            for d in data
        ),
    )


@click.group()
def replay() -> None:
    """Send events again: one event, a time range, or a destination's dead letters."""


@replay.command("event")
@click.argument("event_id")
@tenant_option
@click.option("--destination", "destination_id", help="Only this destination (default: all).")
@json_option
def replay_event(event_id: str, tenant: str, destination_id: str | None, as_json: bool) -> None:
    """New deliveries (new webhook-ids) of one event."""

    async def action(rt: Runtime) -> int:
        if await rt.store.events.get_event(TenantId(tenant), EventId(event_id)) is None:
            raise NotFound(f"no event {event_id} for tenant {tenant}")
        targets = await admin.replay_targets(rt, tenant, destination_id)
        await record(rt, "replay.event", tenant, event_id)
        return await rt.store.deliveries.replay_events(
            TenantId(tenant),
            event_ids=[EventId(event_id)],
            destination_ids=targets,
            now_ms=now_ms(),
        )

    count = run(action)
    emit({"replayed": count}, as_json, f"replayed {count} deliveries")


@replay.command("range")
@tenant_option
@click.option("--destination", "destination_id", required=True)
@click.option("--since", required=True, help="ISO 8601 or epoch ms, inclusive.")
@click.option("--until", help="ISO 8601 or epoch ms, exclusive (default: no upper bound).")
@json_option
def replay_range(
    tenant: str, destination_id: str, since: str, until: str | None, as_json: bool
) -> None:
    """Every event received in [since, until) to one destination again."""

    async def action(rt: Runtime) -> int:
        targets = await admin.replay_targets(rt, tenant, destination_id)
        await record(rt, "replay.range", tenant, destination_id)
        return await rt.store.deliveries.replay_events(
            TenantId(tenant),
            since_ms=parse_time(since, "--since"),
            until_ms=parse_time(until, "--until"),
            destination_ids=targets,
            now_ms=now_ms(),
        )

    count = run(action)
    emit({"replayed": count}, as_json, f"replayed {count} deliveries")


@replay.command("dead-letters")
@tenant_option
@click.option("--destination", "destination_id", required=True)
@json_option
def replay_dead_letters(tenant: str, destination_id: str, as_json: bool) -> None:
    """Put every dead letter of a destination back on the schedule (same webhook-ids)."""

    async def action(rt: Runtime) -> int:
        (target,) = await admin.replay_targets(rt, tenant, destination_id)
        await record(rt, "replay.dead_letters", tenant, destination_id)
        return await rt.store.deliveries.replay_dead_letters(
            TenantId(tenant), target, now_ms=now_ms()
        )

    count = run(action)
    emit({"replayed": count}, as_json, f"replayed {count} dead letters")


@click.command()
@tenant_option
@click.option("--since")
@click.option("--until")
@json_option
def usage(tenant: str, since: str | None, until: str | None, as_json: bool) -> None:
    """Hourly usage meters of a tenant."""

    async def action(rt: Runtime) -> list[dict[str, Any]]:
        rows = await rt.store.usage.usage_report(
            TenantId(tenant),
            since_ms=parse_time(since, "--since"),
            until_ms=parse_time(until, "--until"),
        )
        return [{"hour": iso(r.hour_ms), "meter": r.meter, "value": r.value} for r in rows]

    data = run(action)
    emit(
        data,
        as_json,
        lambda: (
            "\n".join(f"{r['hour']}  {r['meter']:<22} {r['value']}" for r in data)
            or "no usage recorded"
        ),
    )


__all__ = ["deliveries", "events", "replay", "usage"]
