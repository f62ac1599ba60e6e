"""The store: small Protocols per aggregate, bundled by `Store`.

Every method that touches tenant data takes the tenant id and scopes its query by
it; a row of another tenant is indistinguishable from a missing one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import msgspec

from tidegate.model import (
    Attempt,
    Delivery,
    DeliveryId,
    Destination,
    DestinationId,
    DestinationStatus,
    EventId,
    EventMeta,
    Source,
    SourceId,
    Tenant,
    TenantId,
    TransferConsent,
)
from tidegate.security.audit import AuditStore
from tidegate.security.envelope import DataKeyStore


class DataKey(msgspec.Struct, frozen=True):
    version: int
    wrapped: bytes


class StoredEvent(msgspec.Struct, frozen=True):
    meta: EventMeta
    ciphertext: bytes


class RoutedEvent(msgspec.Struct, frozen=True):
    """An event from the log and the destinations its filters selected."""

    meta: EventMeta
    ciphertext: bytes
    destination_ids: tuple[DestinationId, ...]


class AttemptResult(msgspec.Struct, frozen=True):
    """The outcome of one attempt and what it does to its delivery."""

    attempt: Attempt
    delivery_status: str  # DeliveryStatus value
    next_attempt_at_ms: int | None
    last_error: str | None


class UsageIncrement(msgspec.Struct, frozen=True):
    tenant_id: TenantId
    hour_ms: int
    meter: str
    value: int


class UsageRow(msgspec.Struct, frozen=True):
    tenant_id: TenantId
    hour_ms: int
    meter: str
    value: int


class EventQuery(msgspec.Struct, frozen=True, kw_only=True):
    type: str | None = None
    name_index: bytes | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    after_id: EventId | None = None
    limit: int = 50


class PreviousSecret(msgspec.Struct, frozen=True):
    """A destination's signing secret before its last rotation, encrypted like the
    current one (purpose `b"secret:" + destination id`), still signing until
    `expires_at_ms` (the rotation's overlap)."""

    ciphertext: bytes
    expires_at_ms: int


class DeliveryQuery(msgspec.Struct, frozen=True, kw_only=True):
    event_id: EventId | None = None
    destination_id: DestinationId | None = None
    status: str | None = None
    after_id: DeliveryId | None = None
    limit: int = 50


class TenantStore(DataKeyStore, Protocol):
    """Tenants, their sources (write keys), API keys and data keys."""

    async def create_tenant(self, tenant: Tenant) -> None: ...
    async def get_tenant(self, tenant_id: TenantId) -> Tenant | None: ...
    async def list_tenants(self) -> list[Tenant]: ...
    async def create_source(self, source: Source, write_key_hash: str) -> None: ...
    async def source_by_key(self, write_key_hash: str) -> Source | None:
        """The live source whose write key hashes to `write_key_hash`, or whose previous
        key does and is still within its rotation overlap (by the store's clock)."""
        ...

    async def list_sources(self, tenant_id: TenantId) -> list[Source]:
        """The tenant's live (unrevoked) sources, oldest first."""
        ...

    async def rotate_write_key(
        self,
        tenant_id: TenantId,
        source_id: SourceId,
        write_key_hash: str,
        *,
        now_ms: int,
        overlap_ms: int,
    ) -> bool:
        """Make `write_key_hash` the live source's key; the key it replaces keeps working
        until `now_ms + overlap_ms` (overlap 0: it stops now). A key still kept by an
        earlier overlap stops now: only one previous key is kept. False (and nothing
        changed) if the tenant has no such live source."""
        ...

    async def revoke_source(self, tenant_id: TenantId, source_id: SourceId, *, now_ms: int) -> bool:
        """Revoke the source: none of its keys authenticates again, and it leaves
        `list_sources`. False if the tenant has no such live source."""
        ...

    async def create_api_key(self, tenant_id: TenantId, key_hash: str, name: str) -> None: ...
    async def tenant_by_api_key(self, key_hash: str) -> TenantId | None: ...
    async def revoke_api_key(self, tenant_id: TenantId, key_hash: str, *, now_ms: int) -> bool:
        """Revoke the tenant's live API key hashing to `key_hash`; False if there is none."""
        ...

    async def put_transfer_consent(self, consent: TransferConsent) -> None:
        """Record the tenant's consent to transfers to `consent.region` (replacing one
        recorded before). Conflict if the tenant does not exist."""
        ...

    async def delete_transfer_consent(self, tenant_id: TenantId, region: str) -> bool:
        """Withdraw the tenant's consent to `region`; False if there was none."""
        ...

    async def transfer_consents(self, tenant_id: TenantId) -> list[TransferConsent]:
        """The tenant's recorded consents, by region."""
        ...


class DestinationStore(Protocol):
    async def create_destination(self, destination: Destination) -> None: ...
    async def get_destination(
        self, tenant_id: TenantId, destination_id: DestinationId
    ) -> Destination | None: ...
    async def list_destinations(self, tenant_id: TenantId) -> list[Destination]: ...
    async def enabled_destinations(self, tenant_ids: Sequence[TenantId]) -> list[Destination]:
        """Every enabled destination of these tenants (the router's per-batch lookup)."""
        ...

    async def set_destination_status(
        self,
        tenant_id: TenantId,
        destination_id: DestinationId,
        status: DestinationStatus,
        reason: str | None,
    ) -> None: ...

    async def update_destination(
        self, destination: Destination, *, secret_ciphertext: bytes | None = None
    ) -> bool:
        """Store the configuration and status of `destination` (found by its tenant and
        id): name, url, filter, transform, retry schedule, retry_4xx, timeout, status,
        disabled reason and snowflake config. Its kind and creation time are left alone,
        and its secrets too unless `secret_ciphertext` is given: then it becomes the
        current secret in the same statement (a snowflake key changed with its
        settings). False (and nothing changed) if absent."""
        ...

    async def delete_destination(self, tenant_id: TenantId, destination_id: DestinationId) -> bool:
        """Delete the destination; its deliveries and attempts stay (as history). False if
        absent."""
        ...

    async def rotate_secret(
        self,
        tenant_id: TenantId,
        destination_id: DestinationId,
        secret_ciphertext: bytes,
        *,
        previous_expires_at_ms: int | None,
    ) -> bool:
        """In one statement: `secret_ciphertext` becomes the current secret and the one it
        replaces becomes the previous secret until `previous_expires_at_ms` (None: no
        previous secret). False (and nothing changed) if absent."""
        ...

    async def previous_secret(
        self, tenant_id: TenantId, destination_id: DestinationId, *, now_ms: int
    ) -> PreviousSecret | None:
        """The previous signing secret, if the destination has one unexpired at `now_ms`."""
        ...


class EventStore(Protocol):
    async def record_routed(
        self, events: Sequence[RoutedEvent], *, now_ms: int, dedupe_window_ms: int, lease_ms: int
    ) -> list[Delivery]:
        """In one transaction: keep each event unless it duplicates an earlier one.

        An event is a duplicate when another event of its tenant with the same
        `dedupe_index` was kept within the window. A kept event is stored with one
        pending delivery per selected destination, leased for `lease_ms` to the
        caller (which attempts it at once). Recording the same event id twice (a log
        batch consumed again after a crash) changes nothing. Returns the new deliveries.
        """
        ...

    async def purge(self, *, now_ms: int, events_before_ms: int) -> int:
        """Housekeeping: drop expired dedupe claims, and events received before
        `events_before_ms` that have no pending delivery, with their deliveries and
        attempts; at most a bounded batch of each per call (one short transaction).
        Returns the number of events and claims dropped: call again while it is not 0."""
        ...

    async def get_event(self, tenant_id: TenantId, event_id: EventId) -> StoredEvent | None: ...
    async def get_events(
        self, tenant_id: TenantId, event_ids: Sequence[EventId]
    ) -> list[StoredEvent]: ...
    async def list_events(self, tenant_id: TenantId, query: EventQuery) -> list[StoredEvent]:
        """Newest first, by id (time-ordered), after `after_id` when given."""
        ...


class DeliveryStore(Protocol):
    async def claim_due(
        self,
        *,
        now_ms: int,
        lease_ms: int,
        limit: int,
        exclude: Sequence[DestinationId] = (),
    ) -> list[Delivery]:
        """Lease up to `limit` pending deliveries due by `now_ms` and not leased by anyone,
        none of them to a destination in `exclude` (the caller has no room for those)."""
        ...

    async def record_attempts(self, results: Sequence[AttemptResult], *, now_ms: int) -> None:
        """Store attempts and update their deliveries (status, schedule, lease released)."""
        ...

    async def next_due_ms(self, exclude: Sequence[DestinationId] = ()) -> int | None:
        """When the earliest pending delivery to a destination not in `exclude` falls due
        (the scheduler's alarm)."""
        ...

    async def defer(self, delivery_ids: Sequence[DeliveryId], until_ms: int) -> None:
        """Postpone without an attempt (open circuit breaker); releases the lease."""
        ...

    async def get_delivery(
        self, tenant_id: TenantId, delivery_id: DeliveryId
    ) -> Delivery | None: ...
    async def list_deliveries(
        self, tenant_id: TenantId, query: DeliveryQuery
    ) -> list[Delivery]: ...
    async def list_attempts(
        self, tenant_id: TenantId, delivery_ids: Sequence[DeliveryId]
    ) -> list[Attempt]: ...
    async def dead_letter_pending(
        self, tenant_id: TenantId, destination_id: DestinationId, reason: str, *, now_ms: int
    ) -> int:
        """Every pending delivery of the destination becomes a dead letter (it was disabled)."""
        ...

    async def replay_dead_letters(
        self, tenant_id: TenantId, destination_id: DestinationId, *, now_ms: int
    ) -> int:
        """Dead letters go back to pending, due now, keeping their webhook-id."""
        ...

    async def replay_events(
        self,
        tenant_id: TenantId,
        *,
        event_ids: Sequence[EventId] | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        destination_ids: Sequence[DestinationId],
        now_ms: int,
    ) -> int:
        """New deliveries (new webhook-ids) of the chosen events to the destinations."""
        ...

    async def release_leases(self, delivery_ids: Sequence[DeliveryId]) -> None:
        """Give leased, unattempted deliveries back (clean shutdown)."""
        ...

    async def resume_destination(
        self, tenant_id: TenantId, destination_id: DestinationId, *, now_ms: int
    ) -> int:
        """Make every pending delivery of the destination due now (its breaker closed)."""
        ...

    async def release_all_leases(self) -> int:
        """Release every lease (a sole worker starting after a crash); returns how many."""
        ...


class UsageStore(Protocol):
    async def add_usage(self, increments: Sequence[UsageIncrement]) -> None: ...
    async def usage_report(
        self, tenant_id: TenantId, *, since_ms: int | None, until_ms: int | None
    ) -> list[UsageRow]: ...


class Store(Protocol):
    """The store as a whole: one object per engine exposing each aggregate."""

    @property
    def tenants(self) -> TenantStore: ...
    @property
    def destinations(self) -> DestinationStore: ...
    @property
    def events(self) -> EventStore: ...
    @property
    def deliveries(self) -> DeliveryStore: ...
    @property
    def usage(self) -> UsageStore: ...
    @property
    def audit(self) -> AuditStore: ...
    @property
    def exclusive_worker(self) -> bool:
        """True when one process owns the engine (embedded SQLite): a starting worker may
        release every lease at once, since no other worker can hold one."""
        ...

    async def ping(self) -> None:
        """Raise BackendUnavailable unless the store answers."""
        ...

    async def aclose(self) -> None: ...
