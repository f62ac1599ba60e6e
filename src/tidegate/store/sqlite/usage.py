"""Usage counters per tenant, hour and meter, on SQLite."""

from __future__ import annotations

from collections.abc import Sequence

from tidegate.embedded import EmbeddedDatabase
from tidegate.model import TenantId
from tidegate.store.base import UsageIncrement, UsageRow


class SqliteUsageStore:
    """Implements UsageStore on the embedded database."""

    def __init__(self, db: EmbeddedDatabase) -> None:
        self._db = db

    async def add_usage(self, increments: Sequence[UsageIncrement]) -> None:
        if not increments:
            return
        await self._db.write(
            lambda c: c.executemany(
                "INSERT INTO usage (tenant_id, hour_ms, meter, value) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (tenant_id, hour_ms, meter) DO UPDATE"
                " SET value = value + excluded.value",
                [(i.tenant_id, i.hour_ms, i.meter, i.value) for i in increments],
            )
        )

    async def usage_report(
        self, tenant_id: TenantId, *, since_ms: int | None, until_ms: int | None
    ) -> list[UsageRow]:
        rows = await self._db.read(
            lambda c: c.execute(
                "SELECT tenant_id, hour_ms, meter, value FROM usage WHERE tenant_id = ?"
                " AND hour_ms >= ? AND hour_ms < ? ORDER BY hour_ms, meter",
                (tenant_id, since_ms or 0, until_ms or 2**62),
            ).fetchall()
        )
        return [UsageRow(TenantId(r[0]), r[1], r[2], r[3]) for r in rows]
