"""Row shapes shared by the SQL engines: column lists and row -> model conversions.

The engines differ in placeholders and dialect, not in columns: both select these
lists and turn rows into models with these functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from tidegate.model import (
    Attempt,
    AttemptOutcome,
    Delivery,
    DeliveryId,
    DeliveryStatus,
    Destination,
    DestinationId,
    DestinationKind,
    DestinationStatus,
    EventId,
    EventMeta,
    SnowflakeConfig,
    Source,
    SourceId,
    Tenant,
    TenantId,
    TransferConsent,
)
from tidegate.security.audit import GENESIS, AuditEntry, AuditRecord, chain_hash
from tidegate.store.base import StoredEvent

CONSENT_COLUMNS = "tenant_id, region, reference, recorded_by, recorded_at_ms"
AUDIT_COLUMNS = (
    "seq, at_ms, tenant_id, actor, client_id, source_ip, action, resource, outcome,"
    " request_id, detail, prev_hash, hash"
)


def audit_values(e: AuditEntry) -> tuple[object, ...]:
    return (
        e.at_ms, e.tenant_id, e.actor, e.client_id, e.source_ip, e.action, e.resource,
        e.outcome, e.request_id, e.detail,
    )  # fmt: skip


def audit_rows(
    tip: tuple[int, str] | None, entries: Sequence[AuditEntry]
) -> list[tuple[object, ...]]:
    """The audit rows (AUDIT_COLUMNS) that chain `entries` onto the chain's last (seq,
    hash), or onto its start when it has none."""
    seq, prev = tip or (0, GENESIS)
    rows = []
    for entry in entries:
        seq += 1
        digest = chain_hash(prev, seq, entry)
        rows.append((seq, *audit_values(entry), prev, digest))
        prev = digest
    return rows


def audit_record(row: Sequence[Any]) -> AuditRecord:
    entry = AuditEntry(
        at_ms=row[1], tenant_id=row[2], actor=row[3], client_id=row[4], source_ip=row[5],
        action=row[6], resource=row[7], outcome=row[8], request_id=row[9], detail=row[10],
    )  # fmt: skip
    return AuditRecord(seq=row[0], entry=entry, prev_hash=row[11], hash=row[12])


DESTINATION_COLUMNS = (
    "id, tenant_id, name, url, secret_ct, filter, transform, retry_schedule, retry_4xx,"
    " timeout_s, status, disabled_reason, created_at_ms, kind, config"
)
# What update_destination writes: everything but the id, tenant, kind, secrets and
# creation time (a snowflake destination's config included).
DESTINATION_SETTINGS = (
    "name", "url", "filter", "transform", "retry_schedule", "retry_4xx", "timeout_s", "status",
    "disabled_reason", "config",
)  # fmt: skip
SOURCE_COLUMNS = "id, tenant_id, name, created_at_ms"
# A live source by its key, or by the key a rotation replaced while the overlap lasts.
SOURCE_BY_KEY_WHERE = (
    "revoked_at_ms IS NULL AND (write_key_hash = {p}"
    " OR (prev_write_key_hash = {p} AND prev_key_expires_at_ms > {p}))"
)


def set_clause(columns: Sequence[str], placeholder: str) -> str:
    """`a = ?, b = ?` for an UPDATE; `placeholder` is the engine's ("?" or "%s")."""
    return ", ".join(f"{column} = {placeholder}" for column in columns)


EVENT_COLUMNS = (
    "id, tenant_id, source_id, kind, type, name_index, dedupe_index, received_at_ms, ciphertext"
)
DELIVERY_COLUMNS = (
    "id, tenant_id, event_id, destination_id, status, attempts, next_attempt_at_ms,"
    " created_at_ms, updated_at_ms, last_error, replay_of"
)


NEW_DELIVERY_COLUMNS = (
    "id, tenant_id, event_id, destination_id, status, attempts, next_attempt_at_ms,"
    " lease_until_ms, created_at_ms, updated_at_ms, replay_of"
)


def new_delivery_values(d: Delivery, lease_until_ms: int | None) -> tuple[Any, ...]:
    """A new delivery's row, in NEW_DELIVERY_COLUMNS' order."""
    return (
        d.id,
        d.tenant_id,
        d.event_id,
        d.destination_id,
        d.status.value,
        d.attempts,
        d.next_attempt_at_ms,
        lease_until_ms,
        d.created_at_ms,
        d.updated_at_ms,
        d.replay_of,
    )


def tenant_row(row: Sequence[Any]) -> Tenant:
    return Tenant(id=TenantId(row[0]), name=row[1], region=row[2], created_at_ms=row[3])


def source_row(row: Sequence[Any]) -> Source:
    return Source(
        id=SourceId(row[0]), tenant_id=TenantId(row[1]), name=row[2], created_at_ms=row[3]
    )


_encode_config = msgspec.json.Encoder().encode
_decode_snowflake = msgspec.json.Decoder(SnowflakeConfig).decode


def destination_values(d: Destination) -> tuple[Any, ...]:
    """The values of DESTINATION_COLUMNS, in order (retry_4xx as a bool, config as JSON)."""
    return (
        d.id, d.tenant_id, d.name, d.url, d.secret_ciphertext, d.filter, d.transform,
        d.retry_schedule, d.retry_4xx, d.timeout_s, d.status.value, d.disabled_reason,
        d.created_at_ms, d.kind.value, _config_json(d),
    )  # fmt: skip


def _config_json(d: Destination) -> str | None:
    return _encode_config(d.snowflake).decode() if d.snowflake is not None else None


def destination_settings(d: Destination) -> tuple[Any, ...]:
    """The values of DESTINATION_SETTINGS, in order (retry_4xx as a bool, config as JSON)."""
    return (
        d.name, d.url, d.filter, d.transform, d.retry_schedule, d.retry_4xx, d.timeout_s,
        d.status.value, d.disabled_reason, _config_json(d),
    )  # fmt: skip


def destination_row(row: Sequence[Any]) -> Destination:
    return Destination(
        id=DestinationId(row[0]),
        tenant_id=TenantId(row[1]),
        name=row[2],
        url=row[3],
        secret_ciphertext=row[4],
        filter=row[5],
        transform=row[6],
        retry_schedule=row[7],
        retry_4xx=bool(row[8]),
        timeout_s=row[9],
        status=DestinationStatus(row[10]),
        disabled_reason=row[11],
        created_at_ms=row[12],
        kind=DestinationKind(row[13]),
        snowflake=_decode_snowflake(row[14]) if row[14] is not None else None,
    )


def event_row(row: Sequence[Any]) -> StoredEvent:
    meta = EventMeta(
        id=EventId(row[0]),
        tenant_id=TenantId(row[1]),
        source_id=SourceId(row[2]),
        kind=row[3],
        type=row[4],
        name_index=row[5],
        dedupe_index=row[6],
        received_at_ms=row[7],
    )
    return StoredEvent(meta=meta, ciphertext=row[8])


def delivery_row(row: Sequence[Any]) -> Delivery:
    return Delivery(
        id=DeliveryId(row[0]),
        tenant_id=TenantId(row[1]),
        event_id=EventId(row[2]),
        destination_id=DestinationId(row[3]),
        status=DeliveryStatus(row[4]),
        attempts=row[5],
        next_attempt_at_ms=row[6],
        created_at_ms=row[7],
        updated_at_ms=row[8],
        last_error=row[9],
        replay_of=row[10],
    )


def attempt_row(row: Sequence[Any]) -> Attempt:
    return Attempt(
        id=row[0],
        delivery_id=DeliveryId(row[1]),
        tenant_id=TenantId(row[2]),
        started_at_ms=row[3],
        duration_ms=row[4],
        outcome=AttemptOutcome(row[5]),
        status_code=row[6],
        error=row[7],
    )


def consent_row(row: Sequence[Any]) -> TransferConsent:
    return TransferConsent(
        tenant_id=TenantId(row[0]),
        region=row[1],
        reference=row[2],
        recorded_by=row[3],
        recorded_at_ms=row[4],
    )


def consent_values(c: TransferConsent) -> tuple[Any, ...]:
    return (c.tenant_id, c.region, c.reference, c.recorded_by, c.recorded_at_ms)
