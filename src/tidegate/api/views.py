"""The JSON shapes of the API (what it answers and what it takes), and the helpers that
fill them: shared by the HTTP handlers and the CLI, which prints the same documents. No
FastAPI here, so a CLI command does not import the web framework.
"""

import base64
import binascii
from datetime import UTC, datetime
from typing import Any, Literal, Self

import msgspec
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tidegate.errors import InvalidRequest
from tidegate.model import (
    Attempt,
    Delivery,
    Destination,
    EventBody,
    SnowflakeConfig,
)
from tidegate.runtime import Runtime
from tidegate.security.audit import AuditRecord
from tidegate.store import StoredEvent

_decode_body = msgspec.msgpack.Decoder(EventBody).decode


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return (
        datetime.fromtimestamp(ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def parse_time(value: str | None, name: str) -> int | None:
    """ISO 8601 (with zone) or epoch milliseconds."""
    if value is None:
        return None
    if value.isdigit():
        return int(value)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidRequest(f"{name}: expected ISO 8601 time or epoch milliseconds") from exc
    if parsed.tzinfo is None:
        raise InvalidRequest(f"{name}: give a time zone (e.g. 2026-11-28T10:00:00Z)")
    return int(parsed.timestamp() * 1000)


def encode_cursor(last_id: str) -> str:
    return base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> str | None:
    if not cursor:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        return base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequest("cursor is not one this API returned") from exc


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EventOut(BaseModel):
    id: str
    kind: str
    type: str
    name: str | None = None
    message_id: str | None = None
    source_id: str
    received_at: str
    payload: dict[str, Any] | None = Field(None, description="The event as accepted, decrypted.")


class EventPage(BaseModel):
    data: list[EventOut]
    next_cursor: str | None


class AttemptOut(BaseModel):
    id: str
    started_at: str | None
    duration_ms: float
    outcome: str
    status_code: int | None
    error: str | None


class DeliveryOut(BaseModel):
    id: str = Field(description="The webhook-id, stable across retries.")
    event_id: str
    destination_id: str
    status: str
    attempts: int
    next_attempt_at: str | None
    last_error: str | None
    created_at: str | None
    updated_at: str | None
    attempt_log: list[AttemptOut] | None = None


class DeliveryPage(BaseModel):
    data: list[DeliveryOut]
    next_cursor: str | None


class SnowflakeOut(BaseModel):
    """Where a snowflake destination loads (its private key is never shown)."""

    account: str
    user: str
    role: str
    warehouse: str
    database: str
    schema_name: str = Field(alias="schema")
    table: str
    region: str = Field(description="The account's region; always the tenant's.")
    host: str | None = None
    port: int | None = None
    protocol: str | None = None

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)


class SnowflakeIn(Strict):
    account: str = Field(description="Account identifier, e.g. myorg-myaccount")
    user: str
    role: str
    warehouse: str
    database: str = Field(description="Must exist; the table is created if missing")
    schema_name: str = Field(alias="schema", description="Must exist")
    table: str = Field(description="Created if missing: one row per event, keyed by event_id")
    region: str = Field(description="The account's region; must be the tenant's (422 if not)")
    private_key: str = Field(
        description="Unencrypted PEM private key of the user's key pair. Stored encrypted;"
        " never returned."
    )
    host: str | None = Field(None, description="Override the derived host (PrivateLink, tests)")
    port: int | None = Field(None, ge=1, le=65535)
    protocol: Literal["https", "http"] | None = None

    def config(self) -> SnowflakeConfig:
        return SnowflakeConfig(
            account=self.account,
            user=self.user,
            role=self.role,
            warehouse=self.warehouse,
            database=self.database,
            schema=self.schema_name,
            table=self.table,
            region=self.region,
            host=self.host,
            port=self.port,
            protocol=self.protocol,
        )


class DestinationOut(BaseModel):
    id: str
    name: str
    kind: str = "webhook"
    url: str
    filter: str | None
    transform: str | None
    retry_schedule: str | None
    status: str
    disabled_reason: str | None
    created_at: str | None
    snowflake: SnowflakeOut | None = None


class DestinationIn(Strict):
    kind: Literal["webhook", "snowflake"] = "webhook"
    url: str | None = Field(
        None,
        description="webhook: the http(s) endpoint (required); refused if it resolves to an"
        " internal address",
    )
    snowflake: SnowflakeIn | None = Field(None, description="snowflake: required")

    @model_validator(mode="after")
    def _settings_match_kind(self) -> Self:
        # A request-shape error (400), as a missing field is, not a refused setting (422).
        if self.kind == "snowflake" and (self.snowflake is None or self.url is not None):
            raise ValueError('kind "snowflake" takes "snowflake" settings, not "url"')
        if self.kind == "webhook" and (self.url is None or self.snowflake is not None):
            raise ValueError('kind "webhook" takes "url", not "snowflake" settings')
        return self

    name: str | None = Field(None, max_length=200)
    filter: str | None = Field(None, description="JMESPath expression selecting events")
    transform: str | None = Field(None, description="JSON transform spec, as a string")
    retry_schedule: str | None = Field(None, description='e.g. "0,5s,30s,2m,15m,1h,2h*11"')
    retry_4xx: bool = True
    timeout_s: float | None = Field(None, gt=0, le=300)


class DestinationCreated(DestinationOut):
    secret: str | None = Field(
        description="The whsec_ signing secret of a webhook, shown once (null: snowflake)."
    )


class ReplayRange(Strict):
    since: str = Field(description="ISO 8601 time or epoch ms (inclusive)")
    until: str | None = Field(None, description="ISO 8601 time or epoch ms (exclusive)")


class ReplayOut(BaseModel):
    replayed: int


class UsageOut(BaseModel):
    hour: str | None
    meter: str
    value: int


def attempt_out(a: Attempt) -> AttemptOut:
    return AttemptOut(
        id=a.id,
        started_at=iso(a.started_at_ms),
        duration_ms=a.duration_ms,
        outcome=a.outcome.value,
        status_code=a.status_code,
        error=a.error,
    )


def delivery_out(d: Delivery, attempts: list[Attempt] | None = None) -> DeliveryOut:
    return DeliveryOut(
        id=d.id,
        event_id=d.event_id,
        destination_id=d.destination_id,
        status=d.status.value,
        attempts=d.attempts,
        next_attempt_at=iso(d.next_attempt_at_ms),
        last_error=d.last_error,
        created_at=iso(d.created_at_ms),
        updated_at=iso(d.updated_at_ms),
        attempt_log=[attempt_out(a) for a in attempts] if attempts is not None else None,
    )


def destination_out(d: Destination) -> DestinationOut:
    sf = d.snowflake
    return DestinationOut(
        id=d.id,
        name=d.name,
        kind=d.kind.value,
        snowflake=SnowflakeOut.model_validate(msgspec.structs.asdict(sf)) if sf else None,
        url=d.url,
        filter=d.filter,
        transform=d.transform,
        retry_schedule=d.retry_schedule,
        status=d.status.value,
        disabled_reason=d.disabled_reason,
        created_at=iso(d.created_at_ms),
    )


async def decrypt_event(runtime: Runtime, stored: StoredEvent, *, with_payload: bool) -> EventOut:
    plain = await runtime.envelope.decrypt(
        stored.meta.tenant_id, stored.ciphertext, stored.meta.id.encode()
    )
    body = _decode_body(plain)
    return EventOut(
        id=stored.meta.id,
        kind=stored.meta.kind,
        type=stored.meta.type,
        name=body.name,
        message_id=body.message_id,
        source_id=stored.meta.source_id,
        received_at=iso(stored.meta.received_at_ms) or "",
        payload=msgspec.json.decode(body.payload) if with_payload else None,
    )


class AuditOut(BaseModel):
    seq: int
    at: str | None
    tenant_id: str | None
    actor: str
    client_id: str | None
    source_ip: str | None
    action: str
    resource: str | None
    outcome: str
    request_id: str | None
    detail: str | None
    hash: str


class AuditPage(BaseModel):
    data: list[AuditOut]
    next_cursor: int | None


class TenantIn(Strict):
    name: str
    region: str


class TenantOut(BaseModel):
    id: str
    name: str
    region: str
    created_at: str | None


def audit_out(r: AuditRecord) -> AuditOut:
    e = r.entry
    return AuditOut(
        seq=r.seq, at=iso(e.at_ms), tenant_id=e.tenant_id, actor=e.actor, client_id=e.client_id,
        source_ip=e.source_ip, action=e.action, resource=e.resource, outcome=e.outcome,
        request_id=e.request_id, detail=e.detail, hash=r.hash,
    )  # fmt: skip
