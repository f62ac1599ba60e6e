"""Usage counters per tenant, hour and meter, on PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence

from tidegate.model import TenantId
from tidegate.store.base import UsageIncrement, UsageRow
from tidegate.store.postgres.database import PostgresDatabase


class PostgresUsageStore:
    """Implements UsageStore on PostgreSQL."""

    def __init__(self, db: PostgresDatabase) -> None:
        self._db = db

    async def add_usage(self, increments: Sequence[UsageIncrement]) -> None:
        if not increments:
            return
        # In key order, so concurrent flushes lock the same rows in the same order.
        rows = sorted((i.tenant_id, i.hour_ms, i.meter, i.value) for i in increments)
        async with self._db.transaction() as conn:
            await conn.cursor().executemany(
                "INSERT INTO usage (tenant_id, hour_ms, meter, value) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (tenant_id, hour_ms, meter) DO UPDATE"
                " SET value = usage.value + excluded.value",
                rows,
            )

    async def usage_report(
        self, tenant_id: TenantId, *, since_ms: int | None, until_ms: int | None
    ) -> list[UsageRow]:
        rows = await self._db.fetch_all(
            "SELECT tenant_id, hour_ms, meter, value FROM usage WHERE tenant_id = %s"
            " AND hour_ms >= %s AND hour_ms < %s ORDER BY hour_ms, meter",
            (tenant_id, since_ms or 0, until_ms or 2**62),
        )
        return [UsageRow(TenantId(r[0]), r[1], r[2], r[3]) for r in rows]
