"""The workload `migration_queries capture` runs through a real store: every Store method.

It uses only what the code under capture has (an older release has no snowflake
destinations), writes nothing that fails, and keeps every limited read free of ties
(claims take every due delivery), so replaying its statements gives the same answers
each time. `deploy` is called once every table has rows: the corpus marks that point,
and the compatibility test runs the schema migration there.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import msgspec

from tidegate import model
from tidegate.ids import (
    credential_hash,
    new_api_key,
    new_attempt_id,
    new_destination_id,
    new_event_id,
    new_source_id,
    new_tenant_id,
    new_write_key,
    now_ms,
)
from tidegate.model import (
    Attempt,
    AttemptOutcome,
    Delivery,
    Destination,
    DestinationId,
    DestinationStatus,
    EventMeta,
    Source,
    Tenant,
    TenantId,
)
from tidegate.security.audit import AuditEntry
from tidegate.store import (
    AttemptResult,
    DeliveryQuery,
    EventQuery,
    RoutedEvent,
    Store,
    UsageIncrement,
)

_MINUTE = 60_000
_HOUR = 60 * _MINUTE
_DAY = 24 * _HOUR
_REGION = "eu"


def _index(label: str) -> bytes:
    """A stand-in for a blind index (a keyed hash of the event name or dedupe key)."""
    return hashlib.sha256(label.encode()).digest()


def _event(tenant: TenantId, source: Source, at_ms: int, name: str, dedupe: str) -> EventMeta:
    return EventMeta(
        id=new_event_id(),
        tenant_id=tenant,
        source_id=source.id,
        kind="segment",
        type="track",
        received_at_ms=at_ms,
        name_index=_index(name),
        dedupe_index=_index(dedupe),
    )


def _routed(metas: Sequence[EventMeta], targets: tuple[DestinationId, ...]) -> list[RoutedEvent]:
    return [
        RoutedEvent(meta=m, ciphertext=b"ct:" + m.id.encode(), destination_ids=targets)
        for m in metas
    ]


def _audit(at_ms: int, tenant: TenantId | None, action: str) -> AuditEntry:
    return AuditEntry(
        at_ms=at_ms,
        tenant_id=tenant,
        actor="cli:capture",
        client_id=None,
        source_ip="127.0.0.1",
        action=action,
        resource=None if tenant is None else f"tenants/{tenant}",
        outcome="success",
        request_id="req-capture",
        detail='{"capture": true}',
    )


def _result(d: Delivery, at_ms: int, status: str, code: int, retry_at: int | None) -> AttemptResult:
    ok = status == "succeeded"
    return AttemptResult(
        attempt=Attempt(
            id=new_attempt_id(),
            delivery_id=d.id,
            tenant_id=d.tenant_id,
            started_at_ms=at_ms,
            duration_ms=12.5,
            outcome=AttemptOutcome.SUCCEEDED if ok else AttemptOutcome.FAILED,
            status_code=code,
            error=None if ok else f"HTTP {code}",
        ),
        delivery_status=status,
        next_attempt_at_ms=retry_at,
        last_error=None if ok else f"HTTP {code}",
    )


def _destinations(tenant: TenantId, t: int) -> list[Destination]:
    """Two webhooks, one to delete, and a Snowflake table when the code has that kind."""
    hook = Destination(
        id=new_destination_id(),
        tenant_id=tenant,
        name="orders",
        url="https://hooks.example.com/orders",
        secret_ciphertext=b"secret-ct-1",
        filter='event == "Order Completed"',
        transform="{id: messageId, total: properties.total}",
        retry_schedule="5s, 1m, 10m",
        retry_4xx=False,
        timeout_s=5.0,
        created_at_ms=t,
    )
    flaky = Destination(
        id=new_destination_id(),
        tenant_id=tenant,
        name="flaky",
        url="https://flaky.example.com/hook",
        secret_ciphertext=b"secret-ct-2",
        created_at_ms=t + 1,
    )
    doomed = msgspec.structs.replace(flaky, id=new_destination_id(), name="doomed")
    found = [hook, flaky, doomed]
    kind = getattr(model, "DestinationKind", None)
    if kind is not None:  # level 0004 on: a destination has a kind and its settings
        config = model.SnowflakeConfig(
            account="acme-eu",
            user="TIDEGATE",
            role="TIDEGATE_LOADER",
            warehouse="LOAD_WH",
            database="EVENTS",
            schema="PUBLIC",
            table="TIDEGATE_EVENTS",
            region=_REGION,
        )
        found.append(
            Destination(
                id=new_destination_id(),
                tenant_id=tenant,
                name="warehouse",
                url="snowflake://acme-eu/EVENTS.PUBLIC.TIDEGATE_EVENTS",
                secret_ciphertext=b"private-key-ct",
                kind=kind.SNOWFLAKE,
                snowflake=config,
                created_at_ms=t + 2,
            )
        )
    return found


async def run_workload(store: Store, deploy: Callable[[], None]) -> None:
    """Call every Store method with realistic values; `deploy()` once every table has rows."""
    t = now_ms()
    acme = Tenant(id=new_tenant_id(), name="Acme", region=_REGION, created_at_ms=t)
    globex = Tenant(id=new_tenant_id(), name="Globex", region=_REGION, created_at_ms=t + 1)
    tenants, dests, events, usage = store.tenants, store.destinations, store.events, store.usage
    deliveries, audit = store.deliveries, store.audit

    # -- before the deploy: one of everything -----------------------------------------
    for tenant in (acme, globex):
        await tenants.create_tenant(tenant)
    web = Source(id=new_source_id(), tenant_id=acme.id, name="web", created_at_ms=t)
    web_key = credential_hash(new_write_key(_REGION))
    await tenants.create_source(web, web_key)
    api_key = credential_hash(new_api_key(_REGION))
    await tenants.create_api_key(acme.id, api_key, "ci")
    await tenants.add_data_key(acme.id, b"wrapped-data-key-1", "localfile:capture")
    hook, flaky, doomed, *more = _destinations(acme.id, t)
    for destination in (hook, flaky, doomed, *more):
        await dests.create_destination(destination)
    targets = tuple(d.id for d in (hook, flaky, *more))
    metas = [_event(acme.id, web, t + i, "Order Completed", f"order-{i}") for i in range(3)]
    duplicate = msgspec.structs.replace(metas[0], id=new_event_id())  # same dedupe key
    routed = _routed([*metas, duplicate], targets)
    kept = await events.record_routed(routed, now_ms=t, dedupe_window_ms=_DAY, lease_ms=_MINUTE)
    await events.record_routed(routed[:1], now_ms=t, dedupe_window_ms=_DAY, lease_ms=_MINUTE)
    at = t + _MINUTE + 1  # the router's leases have lapsed: a worker claims everything due
    claimed = await deliveries.claim_due(now_ms=at, lease_ms=_MINUTE, limit=1000)
    assert len(claimed) == len(kept) == 3 * len(targets), (len(claimed), len(kept))
    results = [
        _result(d, at, "succeeded", 200, None)
        if d.destination_id != flaky.id
        else _result(d, at, "pending", 503, at + _MINUTE)
        for d in claimed
    ]
    await deliveries.record_attempts(results, now_ms=at)
    hour = t - t % _HOUR
    await usage.add_usage(
        [
            UsageIncrement(acme.id, hour, "events", 3),
            UsageIncrement(acme.id, hour, "deliveries", len(claimed)),
        ]
    )
    await audit.append_audit([_audit(t, acme.id, "source.create"), _audit(t, None, "tenant.list")])
    deploy()

    # -- after the deploy: every read, and every write again ------------------------------
    assert await tenants.get_tenant(acme.id) == acme
    assert await tenants.get_tenant(new_tenant_id()) is None
    await tenants.list_tenants()
    assert await tenants.source_by_key(web_key) is not None
    await tenants.list_sources(acme.id)
    assert await tenants.tenant_by_api_key(api_key) == acme.id
    await tenants.add_data_key(acme.id, b"wrapped-data-key-2", "localfile:capture")
    assert [k.version for k in await tenants.data_keys(acme.id)] == [1, 2]

    app = Source(id=new_source_id(), tenant_id=acme.id, name="app", created_at_ms=t + 5)
    app_key = credential_hash(new_write_key(_REGION))
    await tenants.create_source(app, app_key)
    web_key_2 = credential_hash(new_write_key(_REGION))
    assert await tenants.rotate_write_key(acme.id, web.id, web_key_2, now_ms=t, overlap_ms=_HOUR)
    assert await tenants.source_by_key(web_key) is not None  # within the overlap
    assert await tenants.source_by_key(web_key_2) is not None
    app_key_2 = credential_hash(new_write_key(_REGION))
    await tenants.rotate_write_key(acme.id, app.id, app_key_2, now_ms=t, overlap_ms=0)
    assert await tenants.revoke_source(acme.id, app.id, now_ms=t + 6)
    assert [s.id for s in await tenants.list_sources(acme.id)] == [web.id]
    api_key_2 = credential_hash(new_api_key(_REGION))
    await tenants.create_api_key(acme.id, api_key_2, "deploy")
    assert await tenants.revoke_api_key(acme.id, api_key, now_ms=t + 7)
    assert await tenants.tenant_by_api_key(api_key) is None

    assert await dests.get_destination(acme.id, hook.id) is not None
    await dests.list_destinations(acme.id)
    await dests.enabled_destinations([acme.id, globex.id])
    renamed = msgspec.structs.replace(hook, name="orders-v2", filter=None, timeout_s=10.0)
    assert await dests.update_destination(renamed)
    await dests.rotate_secret(acme.id, hook.id, b"secret-ct-1b", previous_expires_at_ms=t + _HOUR)
    assert await dests.previous_secret(acme.id, hook.id, now_ms=t + 8) is not None
    await dests.rotate_secret(acme.id, hook.id, b"secret-ct-1c", previous_expires_at_ms=None)
    assert await dests.delete_destination(acme.id, doomed.id)

    later = [_event(acme.id, web, t + 10 + i, "Signed Up", f"signup-{i}") for i in range(2)]
    fresh = await events.record_routed(
        _routed(later, targets),
        now_ms=t + 10,
        dedupe_window_ms=_DAY,
        lease_ms=_MINUTE,
    )
    await deliveries.release_leases(sorted(d.id for d in fresh))
    await deliveries.next_due_ms()
    pending = [d.id for d in fresh if d.destination_id == flaky.id]
    await deliveries.defer(pending, t + 5 * _MINUTE)
    await deliveries.resume_destination(acme.id, flaky.id, now_ms=t + 2 * _MINUTE)
    again = await deliveries.claim_due(now_ms=t + 3 * _MINUTE, lease_ms=_MINUTE, limit=1000)
    await deliveries.record_attempts(
        [_result(d, t + 3 * _MINUTE, "succeeded", 204, None) for d in again[:1]],
        now_ms=t + 3 * _MINUTE,
    )
    await deliveries.release_all_leases()
    await dests.set_destination_status(acme.id, flaky.id, DestinationStatus.DISABLED, "failing")
    dead = await deliveries.dead_letter_pending(acme.id, flaky.id, "off", now_ms=t + 4 * _MINUTE)
    assert dead
    assert await deliveries.replay_dead_letters(acme.id, flaky.id, now_ms=t + 5 * _MINUTE)
    await dests.set_destination_status(acme.id, flaky.id, DestinationStatus.ENABLED, None)

    ids = [m.id for m in (*metas, *later)]
    assert await events.get_event(acme.id, ids[0]) is not None
    assert len(await events.get_events(acme.id, ids)) == len(ids)
    page = await events.list_events(acme.id, EventQuery(limit=2))
    await events.list_events(acme.id, EventQuery(limit=2, after_id=page[-1].meta.id))
    await events.list_events(
        acme.id,
        EventQuery(type="track", name_index=_index("Signed Up"), since_ms=t, until_ms=t + _HOUR),
    )
    assert await deliveries.get_delivery(acme.id, claimed[0].id) is not None
    listed = await deliveries.list_deliveries(acme.id, DeliveryQuery(limit=3))
    await deliveries.list_deliveries(acme.id, DeliveryQuery(limit=3, after_id=listed[-1].id))
    await deliveries.list_deliveries(
        acme.id, DeliveryQuery(event_id=ids[0], destination_id=hook.id, status="succeeded")
    )
    await deliveries.list_attempts(acme.id, [d.id for d in claimed])
    await deliveries.replay_events(
        acme.id, event_ids=ids[:2], destination_ids=[hook.id], now_ms=t + 6 * _MINUTE
    )
    await deliveries.replay_events(
        acme.id, since_ms=t, until_ms=t + 5, destination_ids=[hook.id], now_ms=t + 6 * _MINUTE
    )

    await usage.add_usage([UsageIncrement(acme.id, hour, "events", 2)])
    await usage.usage_report(acme.id, since_ms=None, until_ms=None)
    await usage.usage_report(globex.id, since_ms=hour, until_ms=hour + _HOUR)

    await audit.append_audit([_audit(t + 1, acme.id, "destination.update")])
    await audit.list_audit(acme.id, after_seq=None, limit=10)
    await audit.list_audit(None, after_seq=3, limit=2)
    await audit.audit_chain(after_seq=0, limit=100)
    await audit.audit_anchor()
    assert await audit.purge_audit(t + 2) == 3  # everything: the next append starts at the anchor
    await audit.audit_anchor()
    await audit.append_audit([_audit(t + 3, acme.id, "event.read")])

    await events.purge(now_ms=t + 2 * _DAY, events_before_ms=t + 2 * _DAY)
    await store.ping()


async def run_reads(store: Store) -> None:
    """What a restarted process does first: its reads on the database it finds."""
    for tenant in await store.tenants.list_tenants():
        await store.destinations.list_destinations(tenant.id)
        await store.deliveries.list_deliveries(tenant.id, DeliveryQuery(limit=5))
    await store.deliveries.next_due_ms()
