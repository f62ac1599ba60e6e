"""Accepting events: authenticate the write key, pin the region, encrypt, append durably."""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Sequence

import msgspec
from prometheus_client import Counter

from tidegate import telemetry
from tidegate.admin import check_region
from tidegate.api.auth import Authenticator
from tidegate.errors import Forbidden, Unauthorized
from tidegate.eventlog import Record
from tidegate.ids import credential_hash, credential_region, new_event_id
from tidegate.metering import Meter
from tidegate.model import (
    EventBody,
    RecordEvent,
    RequestRecord,
    Source,
    SourceId,
    Tenant,
    TenantId,
)
from tidegate.runtime import Runtime

_CACHE_TTL_S = 10.0
_CACHED_HEADERS = 10_000
_CACHED_HEADER_CHARS = 256
_encode_body = msgspec.msgpack.Encoder().encode
_encode_record = msgspec.msgpack.Encoder().encode
# A log record holds up to this many of a request's events and bytes of their ciphertext:
# one row (or Kafka message) per request where there was one per event, well under
# Kafka's default message size limit whatever the batch.
RECORD_EVENTS = 100
RECORD_BYTES = 256 * 1024
_INGESTED: dict[str, Counter] = {}  # the counter's child per kind: labels() looks it up each call


class Prepared(msgspec.Struct, frozen=True):
    """A validated event, ready to encrypt: `payload` is its final JSON."""

    kind: str
    type: str
    name: str | None
    dedupe_key: str
    message_id: str
    payload: bytes
    received_at_ms: int


def basic_username(authorization: str | None) -> str | None:
    """The username of an HTTP Basic credential (Segment's write key), or None."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.partition(":")[0] or None


class Ingestor:
    """The write side of the api role."""

    def __init__(self, runtime: Runtime, auth: Authenticator) -> None:
        self._rt = runtime
        self._auth = auth
        self._sources: dict[str, tuple[float, Source, Tenant]] = {}
        # Basic Authorization headers that authenticated, with their write key's entry
        # in `_sources` (so the same expiry): an SDK sends the same header with every
        # request, and this skips decoding and hashing it each time. Bounded in count
        # and in header length, since a header's password part is the caller's to vary.
        self._headers: dict[str, tuple[float, Source, Tenant]] = {}

    async def authenticate_header(self, authorization: str | None) -> tuple[Source, Tenant] | None:
        """The source and tenant named by an Authorization header, or None without one.

        Basic: the username is a write key. Bearer: an access token with `events:write`
        (its events are attributed to a source per OAuth client).
        """
        if not authorization:
            return None
        entry = self._headers.get(authorization)
        if entry is not None and entry[0] > time.monotonic():
            return entry[1], entry[2]
        write_key = basic_username(authorization)
        if write_key is not None:
            entry = await self._entry(write_key)
            if len(authorization) <= _CACHED_HEADER_CHARS:
                if len(self._headers) >= _CACHED_HEADERS:
                    self._headers.clear()
                self._headers[authorization] = entry
            return entry[1], entry[2]
        if authorization[:7].lower() != "bearer ":
            raise Unauthorized("use HTTP Basic with the write key, or a Bearer access token")
        principal = await self._auth.principal_from_header(authorization)
        if "events:write" not in principal.scopes or principal.tenant_id is None:
            raise Forbidden("this credential lacks the 'events:write' scope for a tenant")
        tenant = await self._rt.store.tenants.get_tenant(TenantId(principal.tenant_id))
        if tenant is None:
            raise Forbidden("the credential's tenant does not exist in this cell")
        check_region(self._rt.settings, tenant.region)
        client = principal.client_id or principal.subject
        source = Source(
            id=SourceId(f"src_oauth_{client}"[:120]),
            tenant_id=tenant.id,
            name=f"OAuth client {client}",
            created_at_ms=0,
        )
        return source, tenant

    async def authenticate(self, write_key: str | None) -> tuple[Source, Tenant]:
        """The source and tenant of a write key; 401 if unknown, 421 if another region's."""
        _expiry, source, tenant = await self._entry(write_key)
        return source, tenant

    async def _entry(self, write_key: str | None) -> tuple[float, Source, Tenant]:
        """`authenticate`, with the time its answer may be used until."""
        if not write_key:
            raise Unauthorized("no write key: send it as the HTTP Basic username (empty password)")
        minted_in = credential_region(write_key)
        if minted_in is not None:
            check_region(self._rt.settings, minted_in)  # 421 before any lookup
        digest = credential_hash(write_key)
        entry = self._sources.get(digest)
        now = time.monotonic()
        if entry is None or entry[0] <= now:
            found = await self._rt.store.tenants.source_by_key(digest)
            tenant_row = await self._rt.store.tenants.get_tenant(found.tenant_id) if found else None
            if found is None or tenant_row is None:
                raise Unauthorized("unknown or revoked write key")
            if len(self._sources) > 100_000:
                self._sources.clear()
            entry = self._sources[digest] = (now + _CACHE_TTL_S, found, tenant_row)
        check_region(self._rt.settings, entry[2].region)
        return entry

    def reject(self, tenant_id: TenantId, count: int) -> None:
        self._rt.meter.add(tenant_id, Meter.EVENTS_REJECTED, count)

    async def accept(self, source: Source, events: Sequence[Prepared]) -> None:
        """Encrypt and append; returns once the log has committed every event."""
        cipher = await self._rt.envelope.cipher(source.tenant_id)
        encrypt, index, name_index = cipher.encrypt, cipher.index, cipher.name_index
        sealed: list[RecordEvent] = []
        size = 0
        for event in events:
            event_id = new_event_id()
            body = EventBody(name=event.name, message_id=event.message_id, payload=event.payload)
            sealed.append(
                RecordEvent(
                    event_id,
                    event.type,
                    event.received_at_ms,
                    name_index(event.name or ""),
                    index(event.dedupe_key),
                    encrypt(_encode_body(body), event_id.encode()),
                )
            )
            size += len(event.payload)
        kind = events[0].kind  # one endpoint, one kind
        await self._rt.log.append(self._rt.topic, _records(source, kind, sealed))
        self._rt.meter.add(source.tenant_id, Meter.EVENTS_ACCEPTED, len(events))
        counter = _INGESTED.get(kind) or _INGESTED.setdefault(kind, telemetry.INGESTED.labels(kind))
        counter.inc(len(events))
        self._rt.meter.add(source.tenant_id, Meter.BYTES_INGESTED, size)


def _records(source: Source, kind: str, events: list[RecordEvent]) -> list[Record]:
    """The events in log records of up to RECORD_EVENTS and RECORD_BYTES of ciphertext."""
    records: list[Record] = []

    def seal(part: list[RecordEvent]) -> None:
        value = _encode_record(RequestRecord(source.tenant_id, source.id, kind, part))
        records.append(Record(source.tenant_id, value))

    start = size = 0
    for position, event in enumerate(events):
        if position > start and (
            position - start >= RECORD_EVENTS or size + len(event.ciphertext) > RECORD_BYTES
        ):
            seal(events[start:position])
            start, size = position, 0
        size += len(event.ciphertext)
    if start < len(events):
        seal(events[start:])
    return records
