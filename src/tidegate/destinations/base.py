"""What a destination engine does: send one prepared delivery and say what happened."""

from __future__ import annotations

from typing import Protocol

import msgspec

from tidegate.model import Destination, EventId, TenantId


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """The result of one attempt, before the retry rules interpret it."""

    status_code: int | None = None
    error: str | None = None
    blocked: bool = False  # refused by the SSRF policy: no connection was made
    retry_after_s: float | None = None
    duration_ms: float = 0.0
    loaded: bool = False  # a warehouse committed the row (no HTTP status to judge by)
    # The destination refused this event for good (a warehouse refused its row): retrying
    # cannot help, so it is a dead letter at once, `error` saying why. Replaying it after
    # the cause is fixed (say, the table's column type) loads it.
    rejected: bool = False

    @property
    def is_success(self) -> bool:
        return self.loaded or (self.status_code is not None and 200 <= self.status_code < 300)


class Sender(Protocol):
    async def send(
        self,
        destination: Destination,
        *,
        secrets: list[str],
        webhook_id: str,
        body: bytes,
        content_type: str,
    ) -> Outcome:
        """Make one attempt; never raise for the receiver's behaviour (that is the Outcome)."""
        ...

    async def aclose(self) -> None: ...


class WarehouseRow(msgspec.Struct, frozen=True, kw_only=True):
    """One event as a warehouse row: the columns a loader writes, `payload` the JSON
    document (after the destination's transform). Times are ISO 8601 UTC strings."""

    event_id: EventId
    tenant_id: TenantId
    type: str
    event_name: str | None
    user_id: str | None
    anonymous_id: str | None
    message_id: str | None
    sent_at: str | None
    received_at: str
    payload: msgspec.Raw


class Loader(Protocol):
    """Loads rows into one warehouse destination in micro-batches."""

    async def load(self, row: WarehouseRow) -> Outcome:
        """Add `row` to the current batch and wait for its own result: committed (a
        succeeded Outcome, `loaded`), refused by the warehouse for this row's data
        (`rejected`, with the warehouse's reason; its batch-mates still load), or failed
        with its batch (warehouse unreachable, login refused: retried on the schedule).

        Loading a row whose event id the table already holds changes nothing, so a
        retried or replayed batch never duplicates rows. Never raises for the
        warehouse's behaviour (that is the Outcome).
        """
        ...

    async def aclose(self) -> None:
        """Flush what is batched, then close the connection."""
        ...
