"""Pure data: tenants, sources, destinations, events, deliveries, attempts. No I/O."""

from __future__ import annotations

import enum
from typing import Any, NewType

import msgspec

TenantId = NewType("TenantId", str)
SourceId = NewType("SourceId", str)
DestinationId = NewType("DestinationId", str)
EventId = NewType("EventId", str)
DeliveryId = NewType("DeliveryId", str)


class Tenant(msgspec.Struct, frozen=True, kw_only=True):
    id: TenantId
    name: str
    region: str
    created_at_ms: int


class TransferConsent(msgspec.Struct, frozen=True, kw_only=True):
    """A tenant's recorded consent to load its events into accounts in another region."""

    tenant_id: TenantId
    region: str
    reference: str  # the basis of the transfer, e.g. the contract clauses it relies on
    recorded_by: str
    recorded_at_ms: int


class Source(msgspec.Struct, frozen=True, kw_only=True):
    id: SourceId
    tenant_id: TenantId
    name: str
    created_at_ms: int


class DestinationStatus(enum.StrEnum):
    ENABLED = "enabled"
    DISABLED = "disabled"


class DestinationKind(enum.StrEnum):
    WEBHOOK = "webhook"
    SNOWFLAKE = "snowflake"


class SnowflakeConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Where a snowflake destination loads rows; authenticated by a key pair whose private
    key is the destination's encrypted secret.

    `region` is the account's region, which must be the tenant's. `host`, `port` and
    `protocol` override the host the connector derives from `account` (PrivateLink, or a
    local fake warehouse in tests).
    """

    account: str
    user: str
    role: str
    warehouse: str
    database: str
    schema: str
    table: str
    region: str
    host: str | None = None
    port: int | None = None
    protocol: str | None = None


class Destination(msgspec.Struct, frozen=True, kw_only=True):
    """Where a tenant's events go: a webhook endpoint (the whsec_ signing secret stored
    encrypted) or a Snowflake table (the key pair's private key, PEM, stored encrypted
    in the same place, `secret_ciphertext`)."""

    id: DestinationId
    tenant_id: TenantId
    name: str
    url: str
    secret_ciphertext: bytes
    kind: DestinationKind = DestinationKind.WEBHOOK
    snowflake: SnowflakeConfig | None = None
    filter: str | None = None
    transform: str | None = None
    retry_schedule: str | None = None
    retry_4xx: bool = True
    timeout_s: float | None = None
    status: DestinationStatus = DestinationStatus.ENABLED
    disabled_reason: str | None = None
    created_at_ms: int = 0


class EventMeta(msgspec.Struct, frozen=True, kw_only=True):
    """What travels beside the ciphertext: ids and times only, never tenant content.

    `name_index` and `dedupe_index` are keyed hashes (blind indexes) so the store can
    filter by event name and deduplicate without holding the plaintext.
    """

    id: EventId
    tenant_id: TenantId
    source_id: SourceId
    kind: str  # "segment" | "cloudevents"
    type: str  # Segment type, or "cloudevent"
    received_at_ms: int
    name_index: bytes
    dedupe_index: bytes


class LogEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One event in the log: metadata plus the encrypted event body, as the router sees
    it (a log record holds a RequestRecord; see `decode_record`)."""

    meta: EventMeta
    ciphertext: bytes


class RecordEvent(msgspec.Struct, frozen=True, array_like=True):
    """One event of a RequestRecord: what differs between a request's events."""

    id: EventId
    type: str
    received_at_ms: int
    name_index: bytes
    dedupe_index: bytes
    ciphertext: bytes


class RequestRecord(msgspec.Struct, frozen=True, array_like=True, tag=2):
    """A log record's value: events of one request (up to RECORD_EVENTS and RECORD_BYTES
    of ciphertext a record), with what they share said once.

    msgpack `[2, tenant_id, source_id, kind, [[id, type, received_at_ms, name_index,
    dedupe_index, ciphertext], ...]]`: about 300 bytes an event where a map of LogEntry
    fields took 480 (field names, tenant and source again in every event), in the log's
    writes, its WAL and checkpoint copies, and the router's reads."""

    tenant_id: TenantId
    source_id: SourceId
    kind: str
    events: list[RecordEvent]


_decode_request = msgspec.msgpack.Decoder(RequestRecord).decode
# Records of earlier versions: an array of LogEntry maps, or one bare LogEntry (written
# before batching). Both still route.
_decode_older = msgspec.msgpack.Decoder(list[LogEntry] | LogEntry).decode


def decode_record(value: bytes) -> list[LogEntry]:
    """A log record's events, whichever format wrote it; msgspec.DecodeError if none."""
    try:
        record = _decode_request(value)
    except msgspec.ValidationError:
        older = _decode_older(value)
        return [older] if isinstance(older, LogEntry) else older
    tenant_id, source_id, kind = record.tenant_id, record.source_id, record.kind
    return [
        LogEntry(
            meta=EventMeta(
                id=event.id,
                tenant_id=tenant_id,
                source_id=source_id,
                kind=kind,
                type=event.type,
                received_at_ms=event.received_at_ms,
                name_index=event.name_index,
                dedupe_index=event.dedupe_index,
            ),
            ciphertext=event.ciphertext,
        )
        for event in record.events
    ]


class EventBody(msgspec.Struct, frozen=True, kw_only=True):
    """The plaintext that is encrypted: the tenant's content."""

    name: str | None
    message_id: str
    payload: bytes  # the JSON event as accepted (with messageId and receivedAt)


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """A decrypted event, as the router and the read API see it."""

    meta: EventMeta
    body: EventBody

    def document(self) -> dict[str, Any]:
        decoded: dict[str, Any] = msgspec.json.decode(self.body.payload)
        return decoded


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    DEAD = "dead"


class Delivery(msgspec.Struct, kw_only=True):
    id: DeliveryId  # the webhook-id, stable across retries
    tenant_id: TenantId
    event_id: EventId
    destination_id: DestinationId
    status: DeliveryStatus
    attempts: int
    next_attempt_at_ms: int | None
    created_at_ms: int
    updated_at_ms: int
    last_error: str | None = None
    replay_of: DeliveryId | None = None


class AttemptOutcome(enum.StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    BLOCKED = "blocked"


class Attempt(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    delivery_id: DeliveryId
    tenant_id: TenantId
    started_at_ms: int
    duration_ms: float
    outcome: AttemptOutcome
    status_code: int | None
    error: str | None
