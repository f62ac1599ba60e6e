"""tenants, sources, apikeys, destinations."""

from __future__ import annotations

import click

from tidegate import admin
from tidegate.cli.common import emit, json_option, run
from tidegate.model import TenantId
from tidegate.runtime import Runtime


@click.group()
def tenants() -> None:
    """Create and list tenants."""


@tenants.command("create")
@click.argument("name")
@click.option("--region", type=click.Choice(admin.REGIONS), required=True)
@json_option
def tenants_create(name: str, region: str, as_json: bool) -> None:
    """Create a tenant pinned to a region; prints its id."""
    tenant = run(lambda rt: admin.create_tenant(rt, name, region))
    emit({"id": tenant.id, "name": tenant.name, "region": tenant.region}, as_json, tenant.id)


@tenants.command("list")
@json_option
def tenants_list(as_json: bool) -> None:
    rows = run(lambda rt: rt.store.tenants.list_tenants())
    data = [{"id": t.id, "name": t.name, "region": t.region} for t in rows]
    emit(data, as_json, lambda: "\n".join(f"{t['id']}  {t['region']}  {t['name']}" for t in data))


@click.group()
def sources() -> None:
    """Sources and their write keys."""


@sources.command("create")
@click.option("--tenant", required=True)
@click.option("--name", default="default")
@json_option
def sources_create(tenant: str, name: str, as_json: bool) -> None:
    """Create a source; prints its write key ONCE (only a hash is stored)."""
    source, write_key = run(lambda rt: admin.create_source(rt, tenant, name))
    emit(
        {"id": source.id, "tenant_id": source.tenant_id, "write_key": write_key},
        as_json,
        f"source {source.id}\nwrite key (shown once): {write_key}",
    )


@click.group()
def apikeys() -> None:
    """Tenant-scoped API keys for the read API."""


@apikeys.command("create")
@click.option("--tenant", required=True)
@click.option("--name", default="default")
@json_option
def apikeys_create(tenant: str, name: str, as_json: bool) -> None:
    """Create an API key; prints it ONCE (only a hash is stored)."""
    key = run(lambda rt: admin.create_api_key(rt, tenant, name))
    emit({"tenant_id": tenant, "api_key": key}, as_json, f"API key (shown once): {key}")


@click.group()
def destinations() -> None:
    """Webhook destinations."""


@destinations.command("create")
@click.option("--tenant", required=True)
@click.option(
    "--url", required=True, help="https:// endpoint (http:// only with TIDEGATE_HTTPS_ONLY=false)."
)
@click.option("--name")
@click.option("--filter", "filter_expression", help="JMESPath expression selecting events.")
@click.option("--transform", help="JSON transform spec (rename, drop, set, keep, redact).")
@click.option("--retry-schedule", help='e.g. "0,5s,30s,2m,15m,1h,2h*11" (default schedule).')
@click.option("--no-retry-4xx", is_flag=True, help="Dead-letter at once on 4xx other than 408/429.")
@click.option("--timeout", "timeout_s", type=float, help="Per-attempt timeout in seconds.")
@json_option
def destinations_create(
    tenant: str,
    url: str,
    name: str | None,
    filter_expression: str | None,
    transform: str | None,
    retry_schedule: str | None,
    no_retry_4xx: bool,
    timeout_s: float | None,
    as_json: bool,
) -> None:
    """Create a destination; prints its whsec_ signing secret ONCE."""
    destination, secret = run(
        lambda rt: admin.create_destination(
            rt,
            tenant,
            url=url,
            name=name,
            filter_expression=filter_expression,
            transform=transform,
            retry_schedule=retry_schedule,
            retry_4xx=not no_retry_4xx,
            timeout_s=timeout_s,
        )
    )
    emit(
        {
            "id": destination.id,
            "tenant_id": destination.tenant_id,
            "url": destination.url,
            "secret": secret,
        },
        as_json,
        f"destination {destination.id}\nsigning secret (shown once): {secret}",
    )


@destinations.command("list")
@click.option("--tenant", required=True)
@json_option
def destinations_list(tenant: str, as_json: bool) -> None:
    async def action(rt: Runtime) -> list[dict[str, object]]:
        rows = await rt.store.destinations.list_destinations(TenantId(tenant))
        return [
            {
                "id": d.id,
                "url": d.url,
                "status": d.status.value,
                "filter": d.filter,
                "disabled_reason": d.disabled_reason,
            }
            for d in rows
        ]

    data = run(action)
    emit(data, as_json, lambda: "\n".join(f"{d['id']}  {d['status']}  {d['url']}" for d in data))


@click.group()
def keys() -> None:
    """Per-tenant data keys (envelope encryption)."""


@keys.command("rotate")
@click.option("--tenant", required=True)
@json_option
def keys_rotate(tenant: str, as_json: bool) -> None:
    """Add a new data key: new data uses it, existing data stays readable (no downtime)."""

    async def action(rt: Runtime) -> int:
        found = await admin.require_tenant(rt, tenant)
        return await rt.envelope.rotate(found.id)

    version = run(action)
    emit({"tenant_id": tenant, "key_version": version}, as_json, f"data key version {version}")
