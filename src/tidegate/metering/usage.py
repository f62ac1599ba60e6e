"""Per-tenant, per-hour meters, aggregated in memory and flushed to the store each second.

A crash loses at most the last second of increments; the meters are for cost
attribution, not for billing-grade exactness of a single second.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from enum import StrEnum

import structlog

from tidegate.ids import now_ms
from tidegate.model import TenantId
from tidegate.store import Store, UsageIncrement

log = structlog.get_logger(__name__)

HOUR_MS = 3_600_000


class Meter(StrEnum):
    EVENTS_ACCEPTED = "events_accepted"
    EVENTS_REJECTED = "events_rejected"
    BYTES_INGESTED = "bytes_ingested"
    DELIVERIES_ATTEMPTED = "deliveries_attempted"
    DELIVERIES_SUCCEEDED = "deliveries_succeeded"
    DELIVERIES_FAILED = "deliveries_failed"
    DEAD_LETTERS = "dead_letters"
    WAREHOUSE_ROWS = "warehouse_rows"
    WAREHOUSE_BYTES = "warehouse_bytes"  # the rows' JSON payloads, as loaded


class UsageMeter:
    """Counts usage; `run()` flushes to the store until cancelled, then flushes once more."""

    def __init__(self, store: Store, *, flush_s: float = 1.0) -> None:
        self._store = store
        self._flush_s = flush_s
        # Keyed by the Meter member itself: `.value` is an enum property lookup per call.
        self._counts: Counter[tuple[TenantId, int, Meter]] = Counter()

    def add(self, tenant_id: TenantId, meter: Meter, value: int = 1) -> None:
        if value:
            hour = now_ms() // HOUR_MS * HOUR_MS
            self._counts[(tenant_id, hour, meter)] += value

    async def flush(self) -> None:
        if not self._counts:
            return
        counts, self._counts = self._counts, Counter()
        increments = [UsageIncrement(t, h, m.value, v) for (t, h, m), v in counts.items()]
        try:
            await self._store.usage.add_usage(increments)
        except Exception:  # noqa: BLE001 - keep the counts for the next flush
            log.warning("usage.flush_failed", increments=len(increments))
            self._counts.update(counts)

    async def run(self) -> None:
        try:
            while True:
                await asyncio.sleep(self._flush_s)
                await self.flush()
        finally:
            with contextlib.suppress(Exception):
                await self.flush()
