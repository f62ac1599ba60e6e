"""Administrative operations shared by the CLI and the management API.

Every operation takes the tenant id from its caller (the credential, or the operator's
--tenant) and finds resources within that tenant only: another tenant's id is NotFound.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from tidegate import transfers
from tidegate.destinations.snowflake import check_config, private_key_der
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
from tidegate.model import (
    Destination,
    DestinationId,
    DestinationKind,
    DestinationStatus,
    SnowflakeConfig,
    Source,
    SourceId,
    Tenant,
    TenantId,
)
from tidegate.pipeline.retry import RetrySchedule
from tidegate.pipeline.transform import Filter, Transform
from tidegate.runtime import Runtime
from tidegate.settings import REGIONS, Settings

MAX_KEY_OVERLAP_S = 86_400
MAX_SECRET_OVERLAP_S = 7 * 86_400


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
    transform = await _check_settings(
        rt,
        url=url,
        filter_expression=filter_expression,
        transform=transform,
        retry_schedule=retry_schedule,
        timeout_s=timeout_s,
    )
    destination_id = new_destination_id()
    secret = new_webhook_secret()
    cipher = await rt.envelope.cipher(tenant.id)
    destination = Destination(
        id=destination_id,
        tenant_id=tenant.id,
        name=name or url,
        url=url,
        secret_ciphertext=cipher.encrypt(secret.encode(), _secret_purpose(destination_id)),
        filter=filter_expression,
        transform=transform,
        retry_schedule=retry_schedule,
        retry_4xx=retry_4xx,
        timeout_s=timeout_s,
        created_at_ms=now_ms(),
    )
    await rt.store.destinations.create_destination(destination)
    return destination, secret


async def create_snowflake_destination(
    rt: Runtime,
    tenant_id: str,
    *,
    config: SnowflakeConfig,
    private_key_pem: str,
    name: str | None = None,
    filter_expression: str | None = None,
    transform: str | None = None,
    retry_schedule: str | None = None,
) -> Destination:
    """A destination loading one row per event into a Snowflake table.

    The account must be in the tenant's region, or in one the tenant has recorded its
    consent to transfer events to (422 otherwise; see tidegate.transfers). The private
    key (PEM, key-pair authentication) is stored encrypted as a webhook secret is, and
    is never shown again. No SSRF check: the connector talks to the host it derives
    from the account (or the configured host).
    """
    tenant = await require_tenant(rt, tenant_id)
    await _check_snowflake(rt, tenant, config)
    private_key_der(private_key_pem)
    transform = await _check_settings(
        rt,
        url=None,
        filter_expression=filter_expression,
        transform=transform,
        retry_schedule=retry_schedule,
        timeout_s=None,
    )
    destination_id = new_destination_id()
    cipher = await rt.envelope.cipher(tenant.id)
    url = _snowflake_url(config)
    destination = Destination(
        id=destination_id,
        tenant_id=tenant.id,
        name=name or url,
        url=url,
        secret_ciphertext=cipher.encrypt(private_key_pem.encode(), _secret_purpose(destination_id)),
        kind=DestinationKind.SNOWFLAKE,
        snowflake=config,
        filter=filter_expression,
        transform=transform,
        retry_schedule=retry_schedule,
        created_at_ms=now_ms(),
    )
    await rt.store.destinations.create_destination(destination)
    return destination


async def _check_snowflake(rt: Runtime, tenant: Tenant, config: SnowflakeConfig) -> None:
    """Validate a snowflake destination's settings: creation and every update go through
    here, so an update is refused exactly as the same settings would be at creation.
    The account must be in the tenant's region, or one the tenant consented to."""
    check_config(config)
    await transfers.check_region(rt, tenant, config.region, "snowflake.region")


def _snowflake_url(config: SnowflakeConfig) -> str:
    return f"snowflake://{config.account}/{config.database}.{config.schema}.{config.table}"


async def _check_settings(
    rt: Runtime,
    *,
    url: str | None,
    filter_expression: str | None,
    transform: str | None,
    retry_schedule: str | None,
    timeout_s: float | None,
) -> str | None:
    """Validate a destination's settings (SSRF after DNS included); the transform normalised.

    Creation and every update go through here, so an update is refused exactly as the
    same settings would be at creation. `url` None: not a webhook, no SSRF check.
    """
    if url is not None:
        try:
            await rt.ssrf.check_url_resolved(url)
        except OSError as exc:
            raise ValidationFailed(
                f"destination host does not resolve: {exc.strerror or exc}"
            ) from exc
    if filter_expression is not None:
        Filter.compile(filter_expression)
    if transform is not None:
        transform = Transform.compile(transform).to_json()
    if retry_schedule is not None:
        RetrySchedule.parse(retry_schedule)
    if timeout_s is not None and not 0 < timeout_s <= 300:
        raise ValidationFailed("timeout must be between 0 and 300 seconds")
    return transform


def _secret_purpose(destination_id: str) -> bytes:
    """The envelope purpose of a destination's signing secrets (current and previous)."""
    return b"secret:" + destination_id.encode()


async def _require_destination(rt: Runtime, tenant: Tenant, destination_id: str) -> Destination:
    found = await rt.store.destinations.get_destination(tenant.id, DestinationId(destination_id))
    if found is None:
        raise NotFound(f"no destination {destination_id}")
    return found


class SnowflakeChanges(msgspec.Struct, frozen=True, kw_only=True):
    """A partial change to a snowflake destination's settings: a field left UNSET keeps
    its value; None clears an override (host, port, protocol). `private_key` (PEM)
    replaces the key pair's private key."""

    account: str | UnsetType = UNSET
    user: str | UnsetType = UNSET
    role: str | UnsetType = UNSET
    warehouse: str | UnsetType = UNSET
    database: str | UnsetType = UNSET
    schema: str | UnsetType = UNSET
    table: str | UnsetType = UNSET
    region: str | UnsetType = UNSET
    host: str | UnsetType | None = UNSET
    port: int | UnsetType | None = UNSET
    protocol: str | UnsetType | None = UNSET
    private_key: str | UnsetType = UNSET

    def given(self) -> dict[str, Any]:
        """The fields to change, by name."""
        return {k: v for k, v in msgspec.structs.asdict(self).items() if v is not UNSET}


class DestinationChanges(msgspec.Struct, frozen=True, kw_only=True):
    """A partial update: a field left UNSET keeps its value; None clears an optional one
    (a cleared name falls back to the URL, as at creation)."""

    url: str | UnsetType = UNSET
    name: str | UnsetType | None = UNSET
    filter: str | UnsetType | None = UNSET
    transform: str | UnsetType | None = UNSET
    retry_schedule: str | UnsetType | None = UNSET
    retry_4xx: bool | UnsetType = UNSET
    timeout_s: float | UnsetType | None = UNSET
    is_enabled: bool | UnsetType = UNSET
    snowflake: SnowflakeChanges | UnsetType = UNSET


async def update_destination(
    rt: Runtime, tenant_id: str, destination_id: str, changes: DestinationChanges
) -> Destination:
    """Apply `changes`, re-validating the result as creation does (422, nothing changed).

    A snowflake destination's settings and private key change in one write (the key
    stored encrypted, as at creation); workers load with them within seconds, each row
    batched before the change still loading under the settings it was batched with.
    Enabling a disabled destination clears its disabled reason; new events reach it
    again (its dead letters stay dead until replayed). Disabling dead-letters what it
    had pending, as a 410 does.
    """
    tenant = await require_tenant(rt, tenant_id)
    current = await _require_destination(rt, tenant, destination_id)
    given = {k: v for k, v in msgspec.structs.asdict(changes).items() if v is not UNSET}
    is_enabled = given.pop("is_enabled", None)
    is_webhook = current.kind is DestinationKind.WEBHOOK
    if not is_webhook and "url" in given:
        raise ValidationFailed(f"a {current.kind} destination has no url to change")
    new_key: str | None = None
    if "snowflake" in given:
        given, new_key = await _snowflake_changes(rt, tenant, current, given)
    merged = msgspec.structs.replace(current, **given)
    transform = await _check_settings(
        rt,
        url=merged.url if is_webhook else None,
        filter_expression=merged.filter,
        transform=merged.transform,
        retry_schedule=merged.retry_schedule,
        timeout_s=merged.timeout_s,
    )
    status, reason = merged.status, merged.disabled_reason
    if is_enabled is True:
        status, reason = DestinationStatus.ENABLED, None
    elif is_enabled is False and status is DestinationStatus.ENABLED:
        status, reason = DestinationStatus.DISABLED, "disabled by the tenant"
    if is_enabled is True and merged.snowflake is not None:
        # Re-enabling one disabled by a consent withdrawal needs the consent again.
        await transfers.check_region(rt, tenant, merged.snowflake.region, "snowflake.region")
    updated = msgspec.structs.replace(
        merged,
        name=merged.name or merged.url,
        transform=transform,
        status=status,
        disabled_reason=reason,
    )
    secret_ciphertext = None
    if new_key is not None:
        cipher = await rt.envelope.cipher(tenant.id)
        secret_ciphertext = cipher.encrypt(new_key.encode(), _secret_purpose(current.id))
    # Settings and key in one write: a loader never pairs the new account with the old key.
    if not await rt.store.destinations.update_destination(
        updated, secret_ciphertext=secret_ciphertext
    ):
        raise NotFound(f"no destination {destination_id}")
    if current.status is DestinationStatus.ENABLED and status is DestinationStatus.DISABLED:
        await rt.store.deliveries.dead_letter_pending(
            tenant.id, current.id, "destination disabled", now_ms=now_ms()
        )
    return updated


async def _snowflake_changes(
    rt: Runtime, tenant: Tenant, current: Destination, given: dict[str, Any]
) -> tuple[dict[str, Any], str | None]:
    """`given` with its snowflake changes applied to the current settings and validated
    as at creation (the url follows; so does a name that was the url), and the new
    private key, if one was given."""
    changes = given.pop("snowflake")
    if current.snowflake is None or not isinstance(changes, SnowflakeChanges):
        raise ValidationFailed(f"a {current.kind} destination has no snowflake settings")
    fields = changes.given()
    key: str | None = fields.pop("private_key", None)
    config = msgspec.structs.replace(current.snowflake, **fields)
    await _check_snowflake(rt, tenant, config)
    if key is not None:
        private_key_der(key)
    url = _snowflake_url(config)
    if current.name == current.url and "name" not in given:
        given["name"] = url
    return given | {"snowflake": config, "url": url}, key


async def delete_destination(rt: Runtime, tenant_id: str, destination_id: str) -> int:
    """Delete the destination; what it had pending becomes dead letters ("destination
    deleted"). Returns how many. Its delivery history stays readable."""
    tenant = await require_tenant(rt, tenant_id)
    if not await rt.store.destinations.delete_destination(tenant.id, DestinationId(destination_id)):
        raise NotFound(f"no destination {destination_id}")
    return await rt.store.deliveries.dead_letter_pending(
        tenant.id, DestinationId(destination_id), "destination deleted", now_ms=now_ms()
    )


async def rotate_destination_secret(
    rt: Runtime, tenant_id: str, destination_id: str, *, overlap_s: int = 86_400
) -> tuple[str, int | None]:
    """A new whsec_ secret (returned once) and when the previous one stops signing.

    During the overlap every delivery carries a signature by each secret, so receivers
    verifying with either accept it; overlap 0 retires the previous secret at once.
    """
    if not 0 <= overlap_s <= MAX_SECRET_OVERLAP_S:
        raise ValidationFailed(f"overlap must be between 0 and {MAX_SECRET_OVERLAP_S} seconds")
    tenant = await require_tenant(rt, tenant_id)
    current = await _require_destination(rt, tenant, destination_id)
    if current.kind is not DestinationKind.WEBHOOK:
        raise ValidationFailed(f"a {current.kind} destination has no signing secret")
    secret = new_webhook_secret()
    cipher = await rt.envelope.cipher(tenant.id)
    ciphertext = cipher.encrypt(secret.encode(), _secret_purpose(destination_id))
    expires_at_ms = now_ms() + overlap_s * 1000 if overlap_s > 0 else None
    if not await rt.store.destinations.rotate_secret(
        tenant.id, DestinationId(destination_id), ciphertext, previous_expires_at_ms=expires_at_ms
    ):
        raise NotFound(f"no destination {destination_id}")
    return secret, expires_at_ms


async def list_sources(rt: Runtime, tenant_id: str) -> list[Source]:
    tenant = await require_tenant(rt, tenant_id)
    return await rt.store.tenants.list_sources(tenant.id)


async def rotate_write_key(
    rt: Runtime, tenant_id: str, source_id: str, *, overlap_s: int = 0
) -> tuple[str, int | None]:
    """A new write key (returned once) and when the old one stops working (None: now).

    Ingest caches key lookups for a few seconds, so an old key can be accepted that
    much longer.
    """
    if not 0 <= overlap_s <= MAX_KEY_OVERLAP_S:
        raise ValidationFailed(f"overlap must be between 0 and {MAX_KEY_OVERLAP_S} seconds")
    tenant = await require_tenant(rt, tenant_id)
    write_key = new_write_key(tenant.region)
    now = now_ms()
    if not await rt.store.tenants.rotate_write_key(
        tenant.id,
        SourceId(source_id),
        credential_hash(write_key),
        now_ms=now,
        overlap_ms=overlap_s * 1000,
    ):
        raise NotFound(f"no source {source_id}")
    return write_key, now + overlap_s * 1000 if overlap_s > 0 else None


async def revoke_source(rt: Runtime, tenant_id: str, source_id: str) -> None:
    """Revoke the source and its keys (ingest may accept them for its cache TTL, 10 s)."""
    tenant = await require_tenant(rt, tenant_id)
    if not await rt.store.tenants.revoke_source(tenant.id, SourceId(source_id), now_ms=now_ms()):
        raise NotFound(f"no source {source_id}")


async def revoke_api_key(rt: Runtime, tenant_id: str, api_key: str) -> None:
    """Revoke one of the tenant's API keys (the API may accept it for its cache TTL, 10 s)."""
    tenant = await require_tenant(rt, tenant_id)
    if not await rt.store.tenants.revoke_api_key(
        tenant.id, credential_hash(api_key), now_ms=now_ms()
    ):
        raise NotFound("no live API key of this tenant matches")


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
