"""Administrative operations shared by the CLI and (later) the management API."""

from __future__ import annotations

from tidegate.errors import MisdirectedRequest, NotFound, ValidationFailed
from tidegate.ids import (
    credential_hash,
    new_api_key,
    new_destination_id,
    new_source_id,
    new_tenant_id,
    new_webhook_secret,
    new_write_key,
    now_ms,
)
from tidegate.model import Destination, DestinationId, Source, Tenant, TenantId
from tidegate.pipeline.retry import RetrySchedule
from tidegate.pipeline.transform import Filter, Transform
from tidegate.runtime import Runtime
from tidegate.settings import Settings

REGIONS = ("eu", "us")


async def create_tenant(rt: Runtime, name: str, region: str) -> Tenant:
    """A tenant pinned to `region`; only that region's cell may create (and hold) it."""
    if region not in REGIONS:
        raise ValidationFailed(f"region must be one of {', '.join(REGIONS)}")
    check_region(rt.settings, region)
    if not name.strip() or len(name) > 200:
        raise ValidationFailed("tenant name must be 1-200 characters")
    tenant = Tenant(id=new_tenant_id(), name=name.strip(), region=region, created_at_ms=now_ms())
    await rt.store.tenants.create_tenant(tenant)
    await rt.envelope.cipher(tenant.id)  # mint its first data key now, not on the hot path
    return tenant


async def require_tenant(rt: Runtime, tenant_id: str) -> Tenant:
    tenant = await rt.store.tenants.get_tenant(TenantId(tenant_id))
    if tenant is None:
        raise NotFound(f"no tenant {tenant_id}")
    check_region(rt.settings, tenant.region)
    return tenant


def check_region(settings: Settings, region: str) -> None:
    """A cell never writes a byte for a tenant pinned to another region: 421 instead."""
    if region != settings.region:
        endpoint = settings.endpoint_for(region)
        raise MisdirectedRequest(
            f"tenant is pinned to region {region!r}; this is the {settings.region!r} cell."
            f" Send to {endpoint}",
            region=region,
            endpoint=endpoint,
        )


async def create_source(rt: Runtime, tenant_id: str, name: str) -> tuple[Source, str]:
    """A source and its write key (returned once; only its hash is stored)."""
    tenant = await require_tenant(rt, tenant_id)
    write_key = new_write_key(tenant.region)
    source = Source(id=new_source_id(), tenant_id=tenant.id, name=name, created_at_ms=now_ms())
    await rt.store.tenants.create_source(source, credential_hash(write_key))
    return source, write_key


async def create_api_key(rt: Runtime, tenant_id: str, name: str) -> str:
    tenant = await require_tenant(rt, tenant_id)
    key = new_api_key(tenant.region)
    await rt.store.tenants.create_api_key(tenant.id, credential_hash(key), name)
    return key


async def create_destination(
    rt: Runtime,
    tenant_id: str,
    *,
    url: str,
    name: str | None = None,
    filter_expression: str | None = None,
    transform: str | None = None,
    retry_schedule: str | None = None,
    retry_4xx: bool = True,
    timeout_s: float | None = None,
) -> tuple[Destination, str]:
    """Validate everything (SSRF after DNS included), store, return the whsec_ secret once."""
    tenant = await require_tenant(rt, tenant_id)
    try:
        await rt.ssrf.check_url_resolved(url)
    except OSError as exc:
        raise ValidationFailed(f"destination host does not resolve: {exc.strerror or exc}") from exc
    if filter_expression is not None:
        Filter.compile(filter_expression)
    if transform is not None:
        transform = Transform.compile(transform).to_json()
    if retry_schedule is not None:
        RetrySchedule.parse(retry_schedule)
    if timeout_s is not None and not 0 < timeout_s <= 300:
        raise ValidationFailed("timeout must be between 0 and 300 seconds")
    destination_id = new_destination_id()
    secret = new_webhook_secret()
    cipher = await rt.envelope.cipher(tenant.id)
    destination = Destination(
        id=destination_id,
        tenant_id=tenant.id,
        name=name or url,
        url=url,
        secret_ciphertext=cipher.encrypt(secret.encode(), b"secret:" + destination_id.encode()),
        filter=filter_expression,
        transform=transform,
        retry_schedule=retry_schedule,
        retry_4xx=retry_4xx,
        timeout_s=timeout_s,
        created_at_ms=now_ms(),
    )
    await rt.store.destinations.create_destination(destination)
    return destination, secret


async def replay_targets(
    rt: Runtime, tenant_id: str, destination_id: str | None
) -> list[DestinationId]:
    """The destinations a replay goes to: the one named (of this tenant), or every enabled one."""
    if destination_id is None:
        return [
            d.id for d in await rt.store.destinations.enabled_destinations([TenantId(tenant_id)])
        ]
    found = await rt.store.destinations.get_destination(
        TenantId(tenant_id), DestinationId(destination_id)
    )
    if found is None:
        raise NotFound(f"no destination {destination_id}")
    return [found.id]
