"""tenants, sources, apikeys, destinations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from tidegate import admin
from tidegate.cli.common import emit, json_option, run
from tidegate.model import SnowflakeConfig, TenantId
from tidegate.runtime import Runtime
from tidegate.settings import REGIONS


@click.group()
def tenants() -> None:
    """Create and list tenants."""


@tenants.command("create")
@click.argument("name")
@click.option("--region", type=click.Choice(REGIONS), required=True)
@json_option
def tenants_create(name: str, region: str, as_json: bool) -> None:
    """Create a tenant pinned to a region; prints its id."""
    tenant = run(
        lambda rt: admin.create_tenant(rt, name, region),
        audited="tenant.create",
        target=lambda t: (t.id, t.id),
    )
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
    source, write_key = run(
        lambda rt: admin.create_source(rt, tenant, name),
        audited="source.create",
        target=lambda r: (tenant, r[0].id),
    )
    emit(
        {"id": source.id, "tenant_id": source.tenant_id, "write_key": write_key},
        as_json,
        f"source {source.id}\nwrite key (shown once): {write_key}",
    )


@sources.command("list")
@click.option("--tenant", required=True)
@json_option
def sources_list(tenant: str, as_json: bool) -> None:
    """The tenant's live sources (never their keys)."""
    rows = run(lambda rt: admin.list_sources(rt, tenant))
    data = [{"id": s.id, "name": s.name, "created_at_ms": s.created_at_ms} for s in rows]
    emit(data, as_json, lambda: "\n".join(f"{s['id']}  {s['name']}" for s in data))


@sources.command("rotate-key")
@click.option("--tenant", required=True)
@click.option("--source", "source_id", required=True)
@click.option(
    "--overlap",
    "overlap_s",
    type=click.IntRange(0, admin.MAX_KEY_OVERLAP_S),
    default=0,
    show_default=True,
    help="Seconds the old key keeps working beside the new one.",
)
@json_option
def sources_rotate_key(tenant: str, source_id: str, overlap_s: int, as_json: bool) -> None:
    """Give a source a new write key; prints it ONCE. Ingest caches keys for up to 10 s."""
    write_key, expires_at_ms = run(
        lambda rt: admin.rotate_write_key(rt, tenant, source_id, overlap_s=overlap_s),
        audited="source.rotate_key",
        target=lambda _: (tenant, source_id),
    )
    emit(
        {"id": source_id, "write_key": write_key, "previous_key_expires_at_ms": expires_at_ms},
        as_json,
        f"source {source_id}\nnew write key (shown once): {write_key}",
    )


@sources.command("revoke")
@click.option("--tenant", required=True)
@click.option("--source", "source_id", required=True)
@json_option
def sources_revoke(tenant: str, source_id: str, as_json: bool) -> None:
    """Revoke a source: its write keys are refused (within ingest's 10 s key cache)."""
    run(
        lambda rt: admin.revoke_source(rt, tenant, source_id),
        audited="source.revoke",
        target=lambda _: (tenant, source_id),
    )
    emit({"id": source_id, "revoked": True}, as_json, f"source {source_id} revoked")


@click.group()
def apikeys() -> None:
    """Tenant-scoped API keys for the read API."""


@apikeys.command("create")
@click.option("--tenant", required=True)
@click.option("--name", default="default")
@json_option
def apikeys_create(tenant: str, name: str, as_json: bool) -> None:
    """Create an API key; prints it ONCE (only a hash is stored)."""
    key = run(
        lambda rt: admin.create_api_key(rt, tenant, name),
        audited="apikey.create",
        target=lambda _: (tenant, None),
    )
    emit({"tenant_id": tenant, "api_key": key}, as_json, f"API key (shown once): {key}")


@apikeys.command("revoke")
@click.option("--tenant", required=True)
@click.option("--key", "api_key", required=True, help="The tgk_ key to revoke.")
@json_option
def apikeys_revoke(tenant: str, api_key: str, as_json: bool) -> None:
    """Revoke an API key of the tenant (the API caches keys for up to 10 s)."""
    run(
        lambda rt: admin.revoke_api_key(rt, tenant, api_key),
        audited="apikey.revoke",
        target=lambda _: (tenant, None),
    )
    emit({"tenant_id": tenant, "revoked": True}, as_json, "API key revoked")


@click.group()
def destinations() -> None:
    """Webhook and Snowflake destinations."""


_SNOWFLAKE_FIELDS = (
    "account",
    "user",
    "role",
    "warehouse",
    "database",
    "schema",
    "table",
    "region",
)


def _snowflake_options(command: Any) -> Any:
    """--snowflake-<field> options for `destinations create --kind snowflake`."""
    for field in reversed(_SNOWFLAKE_FIELDS):
        command = click.option(f"--snowflake-{field}", f"snowflake_{field}")(command)
    command = click.option(
        "--snowflake-private-key-file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="Unencrypted PEM private key (key-pair auth); stored encrypted.",
    )(command)
    for option in ("host", "protocol"):
        command = click.option(
            f"--snowflake-{option}", help="Override the derived host (PrivateLink, tests)."
        )(command)
    return click.option("--snowflake-port", type=int)(command)


@destinations.command("create")
@click.option("--tenant", required=True)
@click.option(
    "--kind", type=click.Choice(["webhook", "snowflake"]), default="webhook", show_default=True
)
@click.option(
    "--url", help="webhook: https:// endpoint (http:// only with TIDEGATE_HTTPS_ONLY=false)."
)
@click.option("--name")
@click.option("--filter", "filter_expression", help="JMESPath expression selecting events.")
@click.option("--transform", help="JSON transform spec (rename, drop, set, keep, redact).")
@click.option("--retry-schedule", help='e.g. "0,5s,30s,2m,15m,1h,2h*11" (default schedule).')
@click.option("--no-retry-4xx", is_flag=True, help="Dead-letter at once on 4xx other than 408/429.")
@click.option("--timeout", "timeout_s", type=float, help="Per-attempt timeout in seconds.")
@_snowflake_options
@json_option
def destinations_create(
    tenant: str,
    kind: str,
    url: str | None,
    name: str | None,
    filter_expression: str | None,
    transform: str | None,
    retry_schedule: str | None,
    no_retry_4xx: bool,
    timeout_s: float | None,
    as_json: bool,
    **snowflake: Any,
) -> None:
    """Create a destination; a webhook's whsec_ signing secret is printed ONCE.

    A snowflake destination takes every --snowflake-* option but host, port and protocol.
    """
    if kind == "snowflake":
        _create_snowflake(
            tenant, name, filter_expression, transform, retry_schedule, as_json, snowflake
        )
        return
    if url is None:
        raise click.UsageError("--url is required for a webhook destination")
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
        ),
        audited="destination.create",
        target=lambda r: (tenant, r[0].id),
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


def _create_snowflake(
    tenant: str,
    name: str | None,
    filter_expression: str | None,
    transform: str | None,
    retry_schedule: str | None,
    as_json: bool,
    options: dict[str, Any],
) -> None:
    missing = [f"--snowflake-{f}" for f in _SNOWFLAKE_FIELDS if not options[f"snowflake_{f}"]]
    key_file: Path | None = options["snowflake_private_key_file"]
    if key_file is None:
        missing.append("--snowflake-private-key-file")
    if missing or key_file is None:
        raise click.UsageError(f"a snowflake destination needs {', '.join(missing)}")
    config = SnowflakeConfig(
        **{f: options[f"snowflake_{f}"] for f in _SNOWFLAKE_FIELDS},
        host=options["snowflake_host"],
        port=options["snowflake_port"],
        protocol=options["snowflake_protocol"],
    )
    private_key_pem = key_file.read_text()
    destination = run(
        lambda rt: admin.create_snowflake_destination(
            rt,
            tenant,
            config=config,
            private_key_pem=private_key_pem,
            name=name,
            filter_expression=filter_expression,
            transform=transform,
            retry_schedule=retry_schedule,
        ),
        audited="destination.create",
        target=lambda d: (tenant, d.id),
    )
    emit(
        {
            "id": destination.id,
            "tenant_id": destination.tenant_id,
            "kind": destination.kind.value,
            "url": destination.url,
        },
        as_json,
        f"destination {destination.id}  snowflake  {destination.url}",
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
                "kind": d.kind.value,
                "url": d.url,
                "status": d.status.value,
                "filter": d.filter,
                "disabled_reason": d.disabled_reason,
            }
            for d in rows
        ]

    data = run(action)
    emit(data, as_json, lambda: "\n".join(f"{d['id']}  {d['status']}  {d['url']}" for d in data))


@destinations.command("update")
@click.option("--tenant", required=True)
@click.option("--destination", "destination_id", required=True)
@click.option("--url", help="New endpoint; checked against the SSRF rules.")
@click.option("--name")
@click.option("--filter", "filter_expression", help='JMESPath expression; "" removes the filter.')
@click.option("--transform", help='JSON transform spec; "" removes the transform.')
@click.option("--retry-schedule", help='e.g. "0,5s,30s,2m"; "" restores the default schedule.')
@click.option("--retry-4xx/--no-retry-4xx", "retry_4xx", default=None)
@click.option("--timeout", "timeout_s", type=float, help="Per-attempt timeout in seconds.")
@click.option(
    "--enable/--disable",
    "is_enabled",
    default=None,
    help="Enabling clears the disabled reason; disabling dead-letters what is pending.",
)
@_snowflake_options
@json_option
def destinations_update(
    tenant: str,
    destination_id: str,
    url: str | None,
    name: str | None,
    filter_expression: str | None,
    transform: str | None,
    retry_schedule: str | None,
    retry_4xx: bool | None,
    timeout_s: float | None,
    is_enabled: bool | None,
    as_json: bool,
    **snowflake: Any,
) -> None:
    """Change a destination; validated as at creation (nothing changes if refused).

    A snowflake destination takes the --snowflake-* options of `create` (the private key
    is stored encrypted and never printed); --snowflake-host "" and --snowflake-protocol
    "" clear those overrides, --snowflake-port 0 clears the port.
    """
    given: dict[str, Any] = {
        "url": url,
        "name": name,
        "retry_4xx": retry_4xx,
        "timeout_s": timeout_s,
        "is_enabled": is_enabled,
    }
    for field, value in (
        ("filter", filter_expression),
        ("transform", transform),
        ("retry_schedule", retry_schedule),
    ):
        if value is not None:
            given[field] = value or None  # "" clears it
    given = {k: v for k, v in given.items() if v is not None}
    fields = sorted(given)
    snowflake_changes = _snowflake_changes(snowflake)
    if snowflake_changes is not None:
        given["snowflake"] = snowflake_changes
        fields += [f"snowflake.{f}" for f in sorted(snowflake_changes.given())]
    changes = admin.DestinationChanges(**given)
    updated = run(
        lambda rt: admin.update_destination(rt, tenant, destination_id, changes),
        audited="destination.update",
        target=lambda _: (tenant, destination_id),
        detail=", ".join(fields) or "nothing",
    )
    emit(
        {
            "id": updated.id,
            "url": updated.url,
            "status": updated.status.value,
            "filter": updated.filter,
            "disabled_reason": updated.disabled_reason,
        },
        as_json,
        f"destination {updated.id}  {updated.status.value}  {updated.url}",
    )


def _snowflake_changes(options: dict[str, Any]) -> admin.SnowflakeChanges | None:
    """The --snowflake-* options given to `update`, as changes (None: none given)."""
    given: dict[str, Any] = {
        f: options[f"snowflake_{f}"] for f in _SNOWFLAKE_FIELDS if options[f"snowflake_{f}"]
    }
    for field in ("host", "protocol", "port"):
        value = options[f"snowflake_{field}"]
        if value is not None:
            given[field] = value or None  # "" (or port 0) clears the override
    key_file: Path | None = options["snowflake_private_key_file"]
    if key_file is not None:
        given["private_key"] = key_file.read_text()
    return admin.SnowflakeChanges(**given) if given else None


@destinations.command("delete")
@click.option("--tenant", required=True)
@click.option("--destination", "destination_id", required=True)
@json_option
def destinations_delete(tenant: str, destination_id: str, as_json: bool) -> None:
    """Delete a destination; what it had pending becomes dead letters."""
    moved = run(
        lambda rt: admin.delete_destination(rt, tenant, destination_id),
        audited="destination.delete",
        target=lambda _: (tenant, destination_id),
    )
    emit(
        {"id": destination_id, "deleted": True, "dead_lettered": moved},
        as_json,
        f"destination {destination_id} deleted ({moved} pending deliveries dead-lettered)",
    )


@destinations.command("rotate-secret")
@click.option("--tenant", required=True)
@click.option("--destination", "destination_id", required=True)
@click.option(
    "--overlap-s",
    "overlap_s",
    type=click.IntRange(0, admin.MAX_SECRET_OVERLAP_S),
    default=86_400,
    show_default=True,
    help="Seconds deliveries are also signed with the previous secret.",
)
@json_option
def destinations_rotate_secret(
    tenant: str, destination_id: str, overlap_s: int, as_json: bool
) -> None:
    """A new whsec_ signing secret; prints it ONCE."""
    secret, expires_at_ms = run(
        lambda rt: admin.rotate_destination_secret(rt, tenant, destination_id, overlap_s=overlap_s),
        audited="destination.rotate_secret",
        target=lambda _: (tenant, destination_id),
    )
    emit(
        {"id": destination_id, "secret": secret, "previous_secret_expires_at_ms": expires_at_ms},
        as_json,
        f"destination {destination_id}\nnew signing secret (shown once): {secret}",
    )


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

    version = run(action, audited="keys.rotate", target=lambda v: (tenant, f"data key v{v}"))
    emit({"tenant_id": tenant, "key_version": version}, as_json, f"data key version {version}")
