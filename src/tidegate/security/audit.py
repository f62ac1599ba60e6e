"""The audit log: who did what to which tenant's data, when, with what outcome.

Append-only and hash-chained: each record carries the hash of the one before it,
and its own hash covers its content and that previous hash, so changing, removing
or reordering any stored record breaks the chain from there on. `verify` walks the
chain and names the first broken record. Purging records past retention moves an
anchor (the last purged record's hash) so what remains still verifies.

Writes are batched like attempts: records that arrive while a write is in flight
join the next one. `record()` returns only when its record is durable, so a request
that reads data can refuse to answer when its audit record cannot be written.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Protocol

import msgspec

from tidegate.batching import GroupWriter

GENESIS = "0" * 64
_encode = msgspec.json.Encoder(order="deterministic").encode


class AuditEntry(msgspec.Struct, frozen=True, kw_only=True):
    """What a caller records; the store adds seq, prev_hash and hash."""

    at_ms: int
    tenant_id: str | None
    actor: str  # `sub` of the token, "apikey:<hash>", "cli:<user>", or "anonymous"
    client_id: str | None
    source_ip: str | None
    action: str  # noun.verb: "event.read", "destination.create", "auth.failed"...
    resource: str | None
    outcome: str  # "success", "denied", "failed"
    request_id: str | None
    detail: str | None = None


class AuditRecord(msgspec.Struct, frozen=True, kw_only=True):
    seq: int
    entry: AuditEntry
    prev_hash: str
    hash: str


class VerifyResult(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    checked: int
    first_broken_seq: int | None = None
    reason: str | None = None


def chain_hash(prev_hash: str, seq: int, entry: AuditEntry) -> str:
    """The hash of record `seq`: SHA-256 over the previous hash and the canonical entry."""
    return hashlib.sha256(
        prev_hash.encode() + b"\n" + str(seq).encode() + b"\n" + _encode(entry)
    ).hexdigest()


def verify_chain(anchor_seq: int, anchor_hash: str, records: Sequence[AuditRecord]) -> VerifyResult:
    """Check `records` (in seq order) continue the chain from the anchor."""
    expected_seq, expected_prev = anchor_seq + 1, anchor_hash
    for count, record in enumerate(records):
        if record.seq != expected_seq:
            return VerifyResult(
                ok=False, checked=count, first_broken_seq=record.seq,
                reason=f"expected record {expected_seq}, found {record.seq} (removed records)",
            )  # fmt: skip
        if record.prev_hash != expected_prev:
            return VerifyResult(
                ok=False, checked=count, first_broken_seq=record.seq,
                reason="prev_hash does not match the previous record's hash",
            )  # fmt: skip
        if chain_hash(record.prev_hash, record.seq, record.entry) != record.hash:
            return VerifyResult(
                ok=False, checked=count, first_broken_seq=record.seq,
                reason="content does not match its hash (the record was altered)",
            )  # fmt: skip
        expected_seq, expected_prev = record.seq + 1, record.hash
    return VerifyResult(ok=True, checked=len(records))


class AuditStore(Protocol):
    async def append_audit(self, entries: Sequence[AuditEntry]) -> None:
        """Chain and store the entries, in order, in one transaction."""
        ...

    async def list_audit(
        self, tenant_id: str | None, *, after_seq: int | None, limit: int
    ) -> list[AuditRecord]:
        """Newest first; `tenant_id=None` lists every tenant's (operators)."""
        ...

    async def audit_chain(self, *, after_seq: int, limit: int) -> list[AuditRecord]:
        """Records with seq > after_seq, oldest first (for verification)."""
        ...

    async def audit_anchor(self) -> tuple[int, str]:
        """(seq, hash) of the last purged record: where the retained chain starts."""
        ...

    async def purge_audit(self, before_ms: int) -> int:
        """Drop records older than `before_ms`, moving the anchor past them."""
        ...


async def verify(store: AuditStore, *, page: int = 5000) -> VerifyResult:
    """Walk the whole retained chain from its anchor."""
    seq, prev = await store.audit_anchor()
    checked = 0
    while True:
        records = await store.audit_chain(after_seq=seq, limit=page)
        result = verify_chain(seq, prev, records)
        if not result.ok:
            return VerifyResult(
                ok=False, checked=checked + result.checked,
                first_broken_seq=result.first_broken_seq, reason=result.reason,
            )  # fmt: skip
        checked += len(records)
        if len(records) < page:
            return VerifyResult(ok=True, checked=checked)
        seq, prev = records[-1].seq, records[-1].hash


class Auditor:
    """Records audit entries through a GroupWriter; `record` returns once durable."""

    def __init__(self, store: AuditStore) -> None:
        self._writer: GroupWriter[AuditEntry] = GroupWriter(store.append_audit)

    async def record(self, entry: AuditEntry) -> None:
        await self._writer.submit(entry)
