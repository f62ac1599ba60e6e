"""Cross-region transfers: a tenant's recorded consent to load its events outside its region.

A tenant is pinned to a region, and its events are loaded only into warehouse accounts
in that region, unless the tenant has recorded its consent to a transfer to another
region: who recorded it, when, and on what basis (`reference`, say the standard
contractual clauses the transfer relies on). Destinations in another region are refused
(422) without it.

Withdrawing consent disables every destination of the tenant in that region at once
(their pending deliveries become dead letters, as for any disabled destination), and
they cannot be re-enabled or re-created until consent is recorded again. The audit log
keeps the history of grants and withdrawals.
"""

from __future__ import annotations

from tidegate.errors import NotFound, ValidationFailed
from tidegate.ids import now_ms
from tidegate.model import (
    Destination,
    DestinationId,
    DestinationStatus,
    Tenant,
    TenantId,
    TransferConsent,
)
from tidegate.runtime import Runtime
from tidegate.settings import REGIONS

MAX_REFERENCE = 500


def destination_region(destination: Destination) -> str | None:
    """The region a destination sends events to, when it has one (warehouses do)."""
    return destination.snowflake.region if destination.snowflake is not None else None


async def check_region(rt: Runtime, tenant: Tenant, region: str, field: str) -> None:
    """Refuse (422) a destination in `region` unless it is the tenant's or consented to."""
    if region == tenant.region:
        return
    if region not in REGIONS:
        raise ValidationFailed(f"{field} must be one of {', '.join(REGIONS)}")
    consents = await rt.store.tenants.transfer_consents(tenant.id)
    if any(c.region == region for c in consents):
        return
    raise ValidationFailed(
        f"{field} {region!r} is not the tenant's region {tenant.region!r}, and the tenant"
        f" has not recorded consent to transfer events to {region!r}"
        f" (PUT /v1/transfer-consents/{region}, or `tidegate consents grant`)"
    )


async def grant(
    rt: Runtime, tenant: Tenant, region: str, *, reference: str, recorded_by: str
) -> TransferConsent:
    """Record (or renew) the tenant's consent to transfers to `region`."""
    if region not in REGIONS:
        raise ValidationFailed(f"region must be one of {', '.join(REGIONS)}")
    if region == tenant.region:
        raise ValidationFailed(
            f"region {region!r} is the tenant's own region: no transfer, no consent needed"
        )
    reference = reference.strip()
    if not reference or len(reference) > MAX_REFERENCE:
        raise ValidationFailed(
            f"reference must be 1-{MAX_REFERENCE} characters: the basis of the transfer"
            " (for example the contract clauses it relies on)"
        )
    consent = TransferConsent(
        tenant_id=tenant.id,
        region=region,
        reference=reference,
        recorded_by=recorded_by,
        recorded_at_ms=now_ms(),
    )
    await rt.store.tenants.put_transfer_consent(consent)
    return consent


async def withdraw(rt: Runtime, tenant: Tenant, region: str) -> list[DestinationId]:
    """Withdraw consent to `region`; disables and returns the tenant's destinations there.

    Destinations are disabled both before and after the consent is removed, so one
    created concurrently (while the consent still held) is caught by the second pass.
    """
    if region == tenant.region:
        raise ValidationFailed(f"region {region!r} is the tenant's own region")
    disabled = await _disable_in(rt, tenant.id, region)
    if not await rt.store.tenants.delete_transfer_consent(tenant.id, region):
        raise NotFound(f"no transfer consent to region {region!r}")
    disabled += await _disable_in(rt, tenant.id, region)
    return disabled


async def _disable_in(rt: Runtime, tenant_id: TenantId, region: str) -> list[DestinationId]:
    disabled = []
    for destination in await rt.store.destinations.list_destinations(tenant_id):
        if destination_region(destination) != region:
            continue
        if destination.status is DestinationStatus.DISABLED:
            continue
        reason = f"transfer consent to region {region!r} withdrawn"
        await rt.store.destinations.set_destination_status(
            tenant_id, destination.id, DestinationStatus.DISABLED, reason
        )
        await rt.store.deliveries.dead_letter_pending(
            tenant_id, destination.id, reason, now_ms=now_ms()
        )
        disabled.append(destination.id)
    return disabled
