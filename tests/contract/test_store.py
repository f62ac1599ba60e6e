"""The Store contract: dedupe, idempotent routing, tenant scoping, leases, replay, usage."""

from __future__ import annotations

import msgspec

from tidegate.ids import new_event_id, new_tenant_id, now_ms
from tidegate.model import (
    Attempt,
    AttemptOutcome,
    DeliveryId,
    Destination,
    DestinationId,
    DestinationStatus,
    EventMeta,
    Source,
    SourceId,
    Tenant,
    TenantId,
    TransferConsent,
)
from tidegate.security.audit import AuditEntry, verify
from tidegate.store import (
    AttemptResult,
    DeliveryQuery,
    EventQuery,
    RoutedEvent,
    Store,
    UsageIncrement,
)

DAY_MS = 86_400_000


async def _tenant(store: Store) -> TenantId:
    tenant = Tenant(id=new_tenant_id(), name="t", region="eu", created_at_ms=now_ms())
    await store.tenants.create_tenant(tenant)
    return tenant.id


async def _destination(store: Store, tenant_id: TenantId, name: str = "d") -> DestinationId:
    destination = Destination(
        id=DestinationId(f"dst_{name}_{tenant_id}"),
        tenant_id=tenant_id,
        name=name,
        url="https://example.com/h",
        secret_ciphertext=b"x",
        created_at_ms=now_ms(),
    )
    await store.destinations.create_destination(destination)
    return destination.id


def _event(tenant_id: TenantId, dedupe: bytes, received_at_ms: int | None = None) -> EventMeta:
    return EventMeta(
        id=new_event_id(),
        tenant_id=tenant_id,
        source_id=SourceId("src"),
        kind="segment",
        type="track",
        received_at_ms=received_at_ms or now_ms(),
        name_index=b"n" * 16,
        dedupe_index=dedupe,
    )


async def _route(
    store: Store, meta: EventMeta, *dests: DestinationId, at: int | None = None
) -> int:
    created = await store.events.record_routed(
        [RoutedEvent(meta=meta, ciphertext=b"ct", destination_ids=dests)],
        now_ms=at or now_ms(),
        dedupe_window_ms=DAY_MS,
        lease_ms=60_000,
    )
    return len(created)


async def test_duplicate_within_window_creates_nothing(store: Store) -> None:
    tenant = await _tenant(store)
    dest = await _destination(store, tenant)
    assert await _route(store, _event(tenant, b"m1"), dest) == 1
    assert await _route(store, _event(tenant, b"m1"), dest) == 0
    assert len(await store.events.list_events(tenant, EventQuery())) == 1


async def test_duplicate_after_window_is_a_new_event(store: Store) -> None:
    tenant = await _tenant(store)
    dest = await _destination(store, tenant)
    now = now_ms()
    assert await _route(store, _event(tenant, b"m1"), dest, at=now) == 1
    assert await _route(store, _event(tenant, b"m1"), dest, at=now + DAY_MS + 1) == 1


async def test_same_dedupe_key_in_two_tenants_is_two_events(store: Store) -> None:
    a, b = await _tenant(store), await _tenant(store)
    assert await _route(store, _event(a, b"m"), await _destination(store, a)) == 1
    assert await _route(store, _event(b, b"m"), await _destination(store, b)) == 1


async def test_routing_the_same_event_twice_is_idempotent(store: Store) -> None:
    """A log batch consumed again after a crash creates no second delivery."""
    tenant = await _tenant(store)
    dest = await _destination(store, tenant)
    meta = _event(tenant, b"m")
    assert await _route(store, meta, dest) == 1
    assert await _route(store, meta, dest) == 0


async def test_reads_are_scoped_by_tenant(store: Store) -> None:
    a, b = await _tenant(store), await _tenant(store)
    dest = await _destination(store, a)
    meta = _event(a, b"m")
    await _route(store, meta, dest)
    assert await store.events.get_event(a, meta.id) is not None
    assert await store.events.get_event(b, meta.id) is None
    assert await store.destinations.get_destination(b, dest) is None
    (delivery,) = await store.deliveries.list_deliveries(a, DeliveryQuery())
    assert await store.deliveries.get_delivery(b, delivery.id) is None
    assert await store.deliveries.list_deliveries(b, DeliveryQuery()) == []


async def test_leased_deliveries_are_not_claimed_until_released(store: Store) -> None:
    tenant = await _tenant(store)
    await _route(store, _event(tenant, b"m"), await _destination(store, tenant))
    assert await store.deliveries.claim_due(now_ms=now_ms(), lease_ms=60_000, limit=10) == []
    assert await store.deliveries.release_all_leases() == 1
    claimed = await store.deliveries.claim_due(now_ms=now_ms(), lease_ms=60_000, limit=10)
    assert len(claimed) == 1
    assert await store.deliveries.claim_due(now_ms=now_ms(), lease_ms=60_000, limit=10) == []


async def test_claims_and_the_alarm_leave_out_excluded_destinations(store: Store) -> None:
    """The scheduler excludes the destinations whose lanes have no room."""
    tenant = await _tenant(store)
    full = await _destination(store, tenant, "full")
    free = await _destination(store, tenant, "free")
    await _route(store, _event(tenant, b"m"), full, free)
    assert await store.deliveries.release_all_leases() == 2
    assert await store.deliveries.next_due_ms([full, free]) is None
    assert await store.deliveries.next_due_ms([full]) is not None
    claimed = await store.deliveries.claim_due(
        now_ms=now_ms(), lease_ms=60_000, limit=10, exclude=[full]
    )
    assert [d.destination_id for d in claimed] == [free]
    assert await store.deliveries.next_due_ms([full]) is not None  # leased: due at expiry
    (later,) = await store.deliveries.claim_due(now_ms=now_ms(), lease_ms=60_000, limit=10)
    assert later.destination_id == full


async def test_attempts_update_the_delivery_and_dead_letters_replay(store: Store) -> None:
    tenant = await _tenant(store)
    dest = await _destination(store, tenant)
    await _route(store, _event(tenant, b"m"), dest)
    (delivery,) = await store.deliveries.list_deliveries(tenant, DeliveryQuery())
    attempt = Attempt(
        id="att_1",
        delivery_id=delivery.id,
        tenant_id=tenant,
        started_at_ms=now_ms(),
        duration_ms=1.0,
        outcome=AttemptOutcome.FAILED,
        status_code=500,
        error="HTTP 500",
    )
    await store.deliveries.record_attempts(
        [
            AttemptResult(
                attempt=attempt,
                delivery_status="dead",
                next_attempt_at_ms=None,
                last_error="HTTP 500",
            )
        ],
        now_ms=now_ms(),
    )
    (dead,) = await store.deliveries.list_deliveries(tenant, DeliveryQuery(status="dead"))
    assert dead.attempts == 1 and dead.last_error == "HTTP 500"
    assert [a.status_code for a in await store.deliveries.list_attempts(tenant, [dead.id])] == [500]
    assert await store.deliveries.replay_dead_letters(tenant, dest, now_ms=now_ms()) == 1
    (again,) = await store.deliveries.claim_due(now_ms=now_ms(), lease_ms=1000, limit=10)
    assert again.id == dead.id  # the same webhook-id


async def test_replay_events_makes_new_deliveries(store: Store) -> None:
    tenant = await _tenant(store)
    dest = await _destination(store, tenant)
    old = now_ms() - 10_000
    await _route(store, _event(tenant, b"a", received_at_ms=old), dest)
    await _route(store, _event(tenant, b"b"), dest)
    count = await store.deliveries.replay_events(
        tenant, since_ms=old - 1, until_ms=old + 1, destination_ids=[dest], now_ms=now_ms()
    )
    assert count == 1
    assert len(await store.deliveries.list_deliveries(tenant, DeliveryQuery())) == 3


async def test_disabling_dead_letters_pending(store: Store) -> None:
    tenant = await _tenant(store)
    dest = await _destination(store, tenant)
    await _route(store, _event(tenant, b"m"), dest)
    await store.destinations.set_destination_status(tenant, dest, DestinationStatus.DISABLED, "410")
    assert await store.destinations.enabled_destinations([tenant]) == []
    assert await store.deliveries.dead_letter_pending(tenant, dest, "410", now_ms=now_ms()) == 1


async def test_usage_increments_add_up(store: Store) -> None:
    tenant = await _tenant(store)
    hour = now_ms() // 3_600_000 * 3_600_000
    await store.usage.add_usage([UsageIncrement(tenant, hour, "events_accepted", 2)])
    await store.usage.add_usage([UsageIncrement(tenant, hour, "events_accepted", 3)])
    (row,) = await store.usage.usage_report(tenant, since_ms=None, until_ms=None)
    assert row.value == 5


async def test_purge_keeps_events_with_pending_deliveries(store: Store) -> None:
    tenant = await _tenant(store)
    dest = await _destination(store, tenant)
    old = now_ms() - 2 * DAY_MS
    pending = _event(tenant, b"p", received_at_ms=old)
    await _route(store, pending, dest)
    done = _event(tenant, b"d", received_at_ms=old)
    await _route(store, done)
    assert await store.events.purge(now_ms=now_ms(), events_before_ms=now_ms() - DAY_MS) == 1
    assert await store.events.get_event(tenant, pending.id) is not None
    assert await store.events.get_event(tenant, done.id) is None


def _entry(tenant: str | None, action: str = "event.read") -> AuditEntry:
    return AuditEntry(
        at_ms=now_ms(),
        tenant_id=tenant,
        actor="sub-1",
        client_id="c",
        source_ip="127.0.0.1",
        action=action,
        resource="evt_1",
        outcome="success",
        request_id="r1",
    )


async def test_audit_chain_verifies_and_lists_per_tenant(store: Store) -> None:
    a, b = await _tenant(store), await _tenant(store)
    await store.audit.append_audit([_entry(a), _entry(b)])
    await store.audit.append_audit([_entry(a, "events.list")])
    assert (await verify(store.audit)).ok
    mine = await store.audit.list_audit(a, after_seq=None, limit=10)
    assert [r.entry.action for r in mine] == ["events.list", "event.read"]
    assert len(await store.audit.list_audit(None, after_seq=None, limit=10)) == 3


async def test_audit_purge_keeps_the_rest_verifiable(store: Store) -> None:
    old = AuditEntry(
        at_ms=1,
        tenant_id=None,
        actor="x",
        client_id=None,
        source_ip=None,
        action="auth.failed",
        resource=None,
        outcome="denied",
        request_id=None,
    )
    await store.audit.append_audit([old, old])
    await store.audit.append_audit([_entry(None)])
    assert await store.audit.purge_audit(now_ms() - DAY_MS) == 2
    result = await verify(store.audit)
    assert result.ok and result.checked == 1
    await store.audit.append_audit([_entry(None)])
    assert (await verify(store.audit)).ok


async def _source(store: Store, tenant_id: TenantId, key_hash: str) -> Source:
    source = Source(
        id=SourceId(f"src_{key_hash}_{tenant_id}"),
        tenant_id=tenant_id,
        name=key_hash,
        created_at_ms=1,
    )
    await store.tenants.create_source(source, f"{key_hash}-{tenant_id}")
    return source


async def test_rotated_write_key_replaces_the_old_one_at_once(store: Store) -> None:
    tenant = await _tenant(store)
    source = await _source(store, tenant, "k1")
    assert await store.tenants.rotate_write_key(
        tenant, source.id, "k2", now_ms=now_ms(), overlap_ms=0
    )
    assert await store.tenants.source_by_key(f"k1-{tenant}") is None
    assert await store.tenants.source_by_key("k2") == source


async def test_old_write_key_works_during_the_overlap_only(store: Store) -> None:
    tenant = await _tenant(store)
    source = await _source(store, tenant, "k1")
    now = now_ms()
    await store.tenants.rotate_write_key(tenant, source.id, "k2", now_ms=now, overlap_ms=60_000)
    assert await store.tenants.source_by_key(f"k1-{tenant}") == source
    assert await store.tenants.source_by_key("k2") == source
    # Rotating again keeps only the key just replaced (k2), not k1.
    await store.tenants.rotate_write_key(tenant, source.id, "k3", now_ms=now, overlap_ms=60_000)
    assert await store.tenants.source_by_key(f"k1-{tenant}") is None
    assert await store.tenants.source_by_key("k2") == source
    # An overlap that has ended (rotated "long ago") accepts the old key no more.
    await store.tenants.rotate_write_key(
        tenant, source.id, "k4", now_ms=now - 10_000, overlap_ms=5_000
    )
    assert await store.tenants.source_by_key("k3") is None
    assert await store.tenants.source_by_key("k4") == source


async def test_revoked_source_refuses_every_key_and_leaves_the_list(store: Store) -> None:
    tenant = await _tenant(store)
    kept, gone = await _source(store, tenant, "a"), await _source(store, tenant, "b")
    await store.tenants.rotate_write_key(tenant, gone.id, "b2", now_ms=now_ms(), overlap_ms=60_000)
    assert [s.id for s in await store.tenants.list_sources(tenant)] == sorted([kept.id, gone.id])
    assert await store.tenants.revoke_source(tenant, gone.id, now_ms=now_ms())
    assert await store.tenants.source_by_key("b2") is None
    assert await store.tenants.source_by_key(f"b-{tenant}") is None
    assert await store.tenants.list_sources(tenant) == [kept]
    assert not await store.tenants.revoke_source(tenant, gone.id, now_ms=now_ms())
    assert not await store.tenants.rotate_write_key(
        tenant, gone.id, "b3", now_ms=now_ms(), overlap_ms=0
    )


async def test_sources_and_api_keys_of_another_tenant_are_untouchable(store: Store) -> None:
    a, b = await _tenant(store), await _tenant(store)
    source = await _source(store, a, "k")
    await store.tenants.create_api_key(a, f"api-{a}", "default")
    assert await store.tenants.list_sources(b) == []
    assert not await store.tenants.rotate_write_key(
        b, source.id, "x", now_ms=now_ms(), overlap_ms=0
    )
    assert not await store.tenants.revoke_source(b, source.id, now_ms=now_ms())
    assert not await store.tenants.revoke_api_key(b, f"api-{a}", now_ms=now_ms())
    assert await store.tenants.source_by_key(f"k-{a}") == source
    assert await store.tenants.tenant_by_api_key(f"api-{a}") == a


async def test_revoked_api_key_names_no_tenant(store: Store) -> None:
    tenant = await _tenant(store)
    await store.tenants.create_api_key(tenant, f"api-{tenant}", "default")
    assert await store.tenants.revoke_api_key(tenant, f"api-{tenant}", now_ms=now_ms())
    assert await store.tenants.tenant_by_api_key(f"api-{tenant}") is None
    assert not await store.tenants.revoke_api_key(tenant, f"api-{tenant}", now_ms=now_ms())


async def test_update_destination_changes_settings_but_not_secret(store: Store) -> None:
    tenant = await _tenant(store)
    dest = await _destination(store, tenant)
    before = await store.destinations.get_destination(tenant, dest)
    assert before is not None
    changed = msgspec.structs.replace(
        before,
        url="https://example.org/new",
        name="renamed",
        filter="type == 'track'",
        retry_4xx=False,
        timeout_s=3.5,
        status=DestinationStatus.DISABLED,
        disabled_reason="paused",
        secret_ciphertext=b"ignored",
        created_at_ms=1,
    )
    assert await store.destinations.update_destination(changed)
    after = await store.destinations.get_destination(tenant, dest)
    assert after == msgspec.structs.replace(
        changed, secret_ciphertext=b"x", created_at_ms=before.created_at_ms
    )
    other = await _tenant(store)
    assert not await store.destinations.update_destination(
        msgspec.structs.replace(changed, tenant_id=other, name="stolen")
    )
    assert (await store.destinations.get_destination(tenant, dest)) == after


async def test_deleted_destination_is_gone_and_keeps_its_deliveries(store: Store) -> None:
    tenant, other = await _tenant(store), await _tenant(store)
    dest = await _destination(store, tenant)
    await _route(store, _event(tenant, b"m"), dest)
    assert not await store.destinations.delete_destination(other, dest)
    assert await store.destinations.delete_destination(tenant, dest)
    assert await store.destinations.get_destination(tenant, dest) is None
    assert await store.destinations.enabled_destinations([tenant]) == []
    assert not await store.destinations.delete_destination(tenant, dest)
    (delivery,) = await store.deliveries.list_deliveries(tenant, DeliveryQuery())
    assert delivery.destination_id == dest


async def test_rotated_secret_keeps_the_previous_until_it_expires(store: Store) -> None:
    tenant = await _tenant(store)
    dest = await _destination(store, tenant)
    now = now_ms()
    assert await store.destinations.previous_secret(tenant, dest, now_ms=now) is None
    assert await store.destinations.rotate_secret(
        tenant, dest, b"second", previous_expires_at_ms=now + 60_000
    )
    found = await store.destinations.get_destination(tenant, dest)
    assert found is not None and found.secret_ciphertext == b"second"
    previous = await store.destinations.previous_secret(tenant, dest, now_ms=now)
    assert previous is not None
    assert previous.ciphertext == b"x" and previous.expires_at_ms == now + 60_000
    assert await store.destinations.previous_secret(tenant, dest, now_ms=now + 60_000) is None
    other = await _tenant(store)
    assert await store.destinations.previous_secret(other, dest, now_ms=now) is None
    assert not await store.destinations.rotate_secret(
        other, dest, b"stolen", previous_expires_at_ms=None
    )


async def test_rotating_secret_without_overlap_drops_the_previous(store: Store) -> None:
    tenant = await _tenant(store)
    dest = await _destination(store, tenant)
    now = now_ms()
    await store.destinations.rotate_secret(tenant, dest, b"2", previous_expires_at_ms=now + 60_000)
    await store.destinations.rotate_secret(tenant, dest, b"3", previous_expires_at_ms=None)
    assert await store.destinations.previous_secret(tenant, dest, now_ms=now) is None
    found = await store.destinations.get_destination(tenant, dest)
    assert found is not None and found.secret_ciphertext == b"3"


async def test_a_batch_keeps_the_first_event_of_a_dedupe_key_and_skips_known_ones(
    store: Store,
) -> None:
    tenant = await _tenant(store)
    dest = await _destination(store, tenant)
    known = _event(tenant, b"known")
    assert await _route(store, known, dest) == 1
    first, second, other = _event(tenant, b"k"), _event(tenant, b"k"), _event(tenant, b"o")
    created = await store.events.record_routed(
        [
            RoutedEvent(meta=m, ciphertext=b"ct", destination_ids=(dest,))
            for m in (first, known, second, other, first)
        ],
        now_ms=now_ms(),
        dedupe_window_ms=DAY_MS,
        lease_ms=60_000,
    )
    assert sorted(d.event_id for d in created) == sorted([first.id, other.id])
    listed = {e.meta.id for e in await store.events.list_events(tenant, EventQuery())}
    assert listed == {known.id, first.id, other.id}


async def test_two_attempts_of_one_delivery_in_one_batch_both_count(store: Store) -> None:
    tenant = await _tenant(store)
    dest = await _destination(store, tenant)
    await _route(store, _event(tenant, b"m"), dest)
    (delivery,) = await store.deliveries.list_deliveries(tenant, DeliveryQuery())

    def result(n: int, status: str) -> AttemptResult:
        return AttemptResult(
            attempt=Attempt(
                id=f"att_{n}_{delivery.id}",
                delivery_id=delivery.id,
                tenant_id=tenant,
                started_at_ms=now_ms() + n,
                duration_ms=1.0,
                outcome=AttemptOutcome.FAILED
                if status != "succeeded"
                else AttemptOutcome.SUCCEEDED,
                status_code=500 if status != "succeeded" else 200,
                error=None,
            ),
            delivery_status=status,
            next_attempt_at_ms=now_ms() if status == "pending" else None,
            last_error=None,
        )

    await store.deliveries.record_attempts(
        [result(1, "pending"), result(2, "succeeded")], now_ms=now_ms()
    )
    (done,) = await store.deliveries.list_deliveries(tenant, DeliveryQuery())
    assert done.attempts == 2 and done.status.value == "succeeded"
    codes = [a.status_code for a in await store.deliveries.list_attempts(tenant, [done.id])]
    assert sorted(c or 0 for c in codes) == [200, 500]


async def test_thousands_at_once_are_each_claimed_deferred_and_recorded(store: Store) -> None:
    """More rows than one multi-row statement holds, through every step of a delivery."""
    tenant = await _tenant(store)
    dest = await _destination(store, tenant)
    count = 3_000
    at = now_ms()
    created = await store.events.record_routed(
        [
            RoutedEvent(
                meta=_event(tenant, b"bulk-%d" % i), ciphertext=b"ct", destination_ids=(dest,)
            )
            for i in range(count)
        ],
        now_ms=at,
        dedupe_window_ms=DAY_MS,
        lease_ms=60_000,
    )
    assert len(created) == count
    await store.deliveries.defer([d.id for d in created], at - 1)  # unleased and due
    claimed = await store.deliveries.claim_due(now_ms=at, lease_ms=60_000, limit=count)
    assert {d.id for d in claimed} == {d.id for d in created}
    # leased now: a second claim finds none, until the leases are released
    assert await store.deliveries.claim_due(now_ms=at, lease_ms=60_000, limit=count) == []
    await store.deliveries.release_leases([d.id for d in claimed])
    claimed = await store.deliveries.claim_due(now_ms=at, lease_ms=60_000, limit=count)
    assert {d.id for d in claimed} == {d.id for d in created}
    half = count // 2

    def result(n: int, delivery_id: DeliveryId) -> AttemptResult:
        ok = n < half
        return AttemptResult(
            attempt=Attempt(
                id=f"att_bulk_{n}",
                delivery_id=delivery_id,
                tenant_id=tenant,
                started_at_ms=at,
                duration_ms=1.0,
                outcome=AttemptOutcome.SUCCEEDED if ok else AttemptOutcome.FAILED,
                status_code=200 if ok else 503,
                error=None if ok else "HTTP 503",
            ),
            delivery_status="succeeded" if ok else "pending",
            next_attempt_at_ms=None if ok else at + 1_000 + n,
            last_error=None if ok else "HTTP 503",
        )

    await store.deliveries.record_attempts(
        [result(n, d.id) for n, d in enumerate(created)], now_ms=at
    )
    by_id = {
        d.id: d for d in await store.deliveries.list_deliveries(tenant, DeliveryQuery(limit=count))
    }
    assert len(by_id) == count
    for n, d in enumerate(created):
        got = by_id[d.id]
        assert got.attempts == 1
        if n < half:
            assert got.status.value == "succeeded" and got.next_attempt_at_ms is None
        else:
            assert got.status.value == "pending" and got.next_attempt_at_ms == at + 1_000 + n
            assert got.last_error == "HTTP 503"
    attempts = await store.deliveries.list_attempts(tenant, [d.id for d in created[:5]])
    assert len(attempts) == 5
    # the failed half falls due at its own time, and its leases were released
    due = await store.deliveries.claim_due(now_ms=at + 1_000 + half, lease_ms=60_000, limit=count)
    assert [d.id for d in due] == [created[half].id]


async def test_transfer_consents_are_per_tenant_and_replaceable(store: Store) -> None:
    a, b = await _tenant(store), await _tenant(store)

    def consent(tenant: TenantId, reference: str) -> TransferConsent:
        return TransferConsent(
            tenant_id=tenant,
            region="us",
            reference=reference,
            recorded_by="alice",
            recorded_at_ms=now_ms(),
        )

    await store.tenants.put_transfer_consent(consent(a, "SCC v1"))
    await store.tenants.put_transfer_consent(consent(a, "SCC v2"))
    assert [c.reference for c in await store.tenants.transfer_consents(a)] == ["SCC v2"]
    assert await store.tenants.transfer_consents(b) == []
    assert not await store.tenants.delete_transfer_consent(b, "us")
    assert await store.tenants.delete_transfer_consent(a, "us")
    assert await store.tenants.transfer_consents(a) == []
    assert not await store.tenants.delete_transfer_consent(a, "us")
