"""The tenant-scoped management API under /v1: sources and write keys, and changes to
destinations (update, delete, secret rotation).

The tenant comes from the credential, never from the body or path: another tenant's
id is a plain 404. Every change is written to the audit log before the answer, and
credentials (write keys, signing secrets) appear in a response only when minted.
"""

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field, field_validator
from starlette.responses import Response

from tidegate import admin
from tidegate.api.audit import AccessAudit
from tidegate.api.auth import Authenticator, Caller
from tidegate.api.views import DestinationOut, Strict, destination_out, iso
from tidegate.model import Source
from tidegate.runtime import Runtime

# How long ingest and the API may keep accepting a revoked credential: they cache key
# lookups (api/ingest/accept.py, api/auth.py). Stated in the route descriptions.
_KEY_CACHE_NOTE = (
    "Ingest caches write-key lookups for up to 10 seconds, so a retired key can be"
    " accepted for that long after this call returns."
)


class SourceIn(Strict):
    name: str = Field(min_length=1, max_length=200)


class SourceOut(BaseModel):
    id: str
    name: str
    created_at: str | None


class SourceCreated(SourceOut):
    write_key: str = Field(description="The write key (HTTP Basic username). Shown once.")


class KeyRotation(Strict):
    overlap_s: int = Field(
        default=0,
        ge=0,
        le=admin.MAX_KEY_OVERLAP_S,
        description="Seconds the old key keeps working beside the new one (0: stops at once).",
    )


class KeyRotated(BaseModel):
    id: str
    write_key: str = Field(description="The new write key. Shown once.")
    previous_key_expires_at: str | None = Field(
        description="When the old key stops working (null: it already has)."
    )


class SnowflakePatch(Strict):
    """Only the settings given change (validated as at creation); null clears host, port
    or protocol."""

    account: str | None = None
    user: str | None = None
    role: str | None = None
    warehouse: str | None = None
    database: str | None = None
    schema_name: str | None = Field(None, alias="schema")
    table: str | None = Field(None, description="Created if missing at the next load")
    region: str | None = Field(None, description="Must stay the tenant's (422 if not)")
    private_key: str | None = Field(
        None,
        description="A new unencrypted PEM private key. Stored encrypted; never returned.",
    )
    host: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    protocol: Literal["https", "http"] | None = None

    @field_validator(
        "account", "user", "role", "warehouse", "database", "schema_name", "table", "region",
        "private_key",
    )  # fmt: skip
    @classmethod
    def _not_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("may be left out, but not null")
        return value

    def changes(self) -> admin.SnowflakeChanges:
        return admin.SnowflakeChanges(**self.model_dump(exclude_unset=True, by_alias=True))

    def changed(self) -> list[str]:
        """The names of the settings given, for the audit record (never their values)."""
        return sorted("schema" if f == "schema_name" else f for f in self.model_fields_set)


class DestinationPatch(Strict):
    """Only the fields given change; null clears an optional field."""

    url: str | None = Field(None, description="Re-checked against the SSRF rules (422 if refused)")
    name: str | None = Field(None, max_length=200)
    filter: str | None = Field(None, description="JMESPath expression selecting events")
    transform: str | None = Field(None, description="JSON transform spec, as a string")
    retry_schedule: str | None = Field(None, description='e.g. "0,5s,30s,2m,15m,1h,2h*11"')
    retry_4xx: bool | None = None
    timeout_s: float | None = Field(None, gt=0, le=300)
    enabled: bool | None = Field(
        None, description="true re-enables a disabled destination and clears its reason"
    )
    snowflake: SnowflakePatch | None = Field(
        None, description="A snowflake destination's settings to change (the rest stay)"
    )

    @field_validator("url", "retry_4xx", "enabled", "snowflake")
    @classmethod
    def _not_null(cls, value: object) -> object:
        # Validators skip defaults: this refuses only an explicit null, which would not
        # mean "unchanged" and has nothing to clear.
        if value is None:
            raise ValueError("may be left out, but not null")
        return value


class SecretRotation(Strict):
    overlap_s: int = Field(
        default=86_400,
        ge=0,
        le=admin.MAX_SECRET_OVERLAP_S,
        description="Seconds deliveries are also signed with the previous secret (0: not at all).",
    )


class SecretRotated(BaseModel):
    secret: str = Field(description="The new whsec_ signing secret. Shown once.")
    previous_secret_expires_at: str | None = Field(
        description="Until when deliveries also carry a signature by the previous secret."
    )


def source_out(s: Source) -> SourceOut:
    return SourceOut(id=s.id, name=s.name, created_at=iso(s.created_at_ms))


def build_manage_router(runtime: Runtime, auth: Authenticator, access: AccessAudit) -> APIRouter:
    router = APIRouter(prefix="/v1")
    Need_events_read = Annotated[Caller, Depends(auth.require("events:read"))]
    Need_sources_write = Annotated[Caller, Depends(auth.require("sources:write"))]
    Need_destinations_write = Annotated[Caller, Depends(auth.require("destinations:write"))]

    @router.post("/sources", response_model=SourceCreated, status_code=201, tags=["sources"])
    async def create_source(caller: Need_sources_write, body: SourceIn) -> SourceCreated:
        """Create a source; the response carries its write key, once (only a hash is kept)."""
        source, write_key = await admin.create_source(runtime, caller.tenant.id, body.name)
        await access.allowed(caller, "source.create", source.id)
        return SourceCreated(**source_out(source).model_dump(), write_key=write_key)

    @router.get("/sources", response_model=list[SourceOut], tags=["sources"])
    async def list_sources(caller: Need_events_read) -> list[SourceOut]:
        """The tenant's live sources (revoked ones are gone); never their keys."""
        rows = await admin.list_sources(runtime, caller.tenant.id)
        await access.allowed(caller, "sources.list")
        return [source_out(s) for s in rows]

    @router.post(
        "/sources/{source_id}/rotate-key",
        response_model=KeyRotated,
        tags=["sources"],
        description=(
            "Give the source a new write key, shown once. The old key stops working at"
            " once, or after `overlap_s` seconds (at most a day) during which both work;"
            " a key still kept by an earlier overlap stops at once. " + _KEY_CACHE_NOTE
        ),
    )
    async def rotate_key(
        caller: Need_sources_write, source_id: str, body: KeyRotation | None = None
    ) -> KeyRotated:
        overlap_s = body.overlap_s if body else 0
        write_key, expires_at_ms = await admin.rotate_write_key(
            runtime, caller.tenant.id, source_id, overlap_s=overlap_s
        )
        await access.allowed(caller, "source.rotate_key", source_id, detail=f"overlap {overlap_s}s")
        return KeyRotated(
            id=source_id, write_key=write_key, previous_key_expires_at=iso(expires_at_ms)
        )

    @router.delete(
        "/sources/{source_id}",
        status_code=204,
        response_class=Response,
        tags=["sources"],
        description=(
            "Revoke the source: its write keys are refused (401) from then on. " + _KEY_CACHE_NOTE
        ),
    )
    async def revoke_source(caller: Need_sources_write, source_id: str) -> Response:
        await admin.revoke_source(runtime, caller.tenant.id, source_id)
        await access.allowed(caller, "source.revoke", source_id)
        return Response(status_code=204)

    @router.patch(
        "/destinations/{destination_id}", response_model=DestinationOut, tags=["destinations"]
    )
    async def update_destination(
        caller: Need_destinations_write, destination_id: str, body: DestinationPatch
    ) -> DestinationOut:
        """Change a destination. The result is validated as at creation (SSRF after DNS,
        filter, transform, retry schedule): 422 with the reason, and nothing changes.

        `enabled: true` re-enables a disabled destination (say, after a 410) and clears
        its reason: new events reach it again; its dead letters stay until replayed.
        `enabled: false` disables it and dead-letters what it had pending. Workers
        pick the change up within a few seconds.

        `snowflake` changes a snowflake destination's settings or private key (stored
        encrypted, never returned), validated as at creation: the account's region must
        stay the tenant's (422). The loader reconnects with the new settings; rows
        already batched load under the old ones, so none is lost or loaded twice.
        """
        given: dict[str, Any] = body.model_dump(exclude_unset=True, exclude={"snowflake"})
        if "enabled" in given:
            given["is_enabled"] = given.pop("enabled")
        fields = sorted(body.model_fields_set - {"snowflake"})
        if body.snowflake is not None:
            given["snowflake"] = body.snowflake.changes()
            fields += [f"snowflake.{f}" for f in body.snowflake.changed()]
        updated = await admin.update_destination(
            runtime, caller.tenant.id, destination_id, admin.DestinationChanges(**given)
        )
        changed = ", ".join(fields) or "nothing"
        await access.allowed(caller, "destination.update", destination_id, detail=changed)
        return destination_out(updated)

    @router.delete(
        "/destinations/{destination_id}",
        status_code=204,
        response_class=Response,
        tags=["destinations"],
    )
    async def delete_destination(caller: Need_destinations_write, destination_id: str) -> Response:
        """Delete a destination. New events no longer go to it; what it had pending becomes
        dead letters ("destination deleted"). Its delivery history stays readable."""
        moved = await admin.delete_destination(runtime, caller.tenant.id, destination_id)
        await access.allowed(
            caller, "destination.delete", destination_id, detail=f"{moved} dead-lettered"
        )
        return Response(status_code=204)

    @router.post(
        "/destinations/{destination_id}/rotate-secret",
        response_model=SecretRotated,
        tags=["destinations"],
    )
    async def rotate_secret(
        caller: Need_destinations_write, destination_id: str, body: SecretRotation | None = None
    ) -> SecretRotated:
        """A new whsec_ signing secret, shown once.

        For `overlap_s` seconds (default a day, at most 7 days) every delivery carries two
        `v1,` signatures in `webhook-signature`, by the new and by the previous secret, so
        a receiver verifying with either accepts it while it switches; after that, only
        the new one. Workers pick the new secret up within a few seconds.
        """
        overlap_s = body.overlap_s if body else SecretRotation().overlap_s
        secret, expires_at_ms = await admin.rotate_destination_secret(
            runtime, caller.tenant.id, destination_id, overlap_s=overlap_s
        )
        await access.allowed(
            caller, "destination.rotate_secret", destination_id, detail=f"overlap {overlap_s}s"
        )
        return SecretRotated(secret=secret, previous_secret_expires_at=iso(expires_at_ms))

    return router


__all__ = ["build_manage_router"]
