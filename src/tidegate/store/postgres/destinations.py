"""Destinations and their signing secrets, on PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence

from tidegate.model import Destination, DestinationId, DestinationStatus, TenantId
from tidegate.store.base import PreviousSecret
from tidegate.store.postgres.database import PostgresDatabase, params, require_tenant
from tidegate.store.rows import (
    DESTINATION_COLUMNS,
    DESTINATION_SETTINGS,
    destination_row,
    destination_settings,
    destination_values,
    set_clause,
)


class PostgresDestinationStore:
    """Implements DestinationStore on PostgreSQL."""

    def __init__(self, db: PostgresDatabase) -> None:
        self._db = db

    async def create_destination(self, destination: Destination) -> None:
        d = destination
        async with self._db.transaction() as conn:
            await require_tenant(conn, d.tenant_id)
            await conn.execute(
                f"INSERT INTO destinations ({DESTINATION_COLUMNS}) VALUES ({params(15)})",
                destination_values(d),
            )

    async def get_destination(
        self, tenant_id: TenantId, destination_id: DestinationId
    ) -> Destination | None:
        row = await self._db.fetch_one(
            f"SELECT {DESTINATION_COLUMNS} FROM destinations WHERE tenant_id = %s AND id = %s",
            (tenant_id, destination_id),
        )
        return destination_row(row) if row else None

    async def list_destinations(self, tenant_id: TenantId) -> list[Destination]:
        rows = await self._db.fetch_all(
            f"SELECT {DESTINATION_COLUMNS} FROM destinations WHERE tenant_id = %s ORDER BY id",
            (tenant_id,),
        )
        return [destination_row(r) for r in rows]

    async def enabled_destinations(self, tenant_ids: Sequence[TenantId]) -> list[Destination]:
        ids = list(dict.fromkeys(tenant_ids))
        if not ids:
            return []
        rows = await self._db.fetch_all(
            f"SELECT {DESTINATION_COLUMNS} FROM destinations"
            " WHERE tenant_id = ANY(%s) AND status = 'enabled' ORDER BY id",
            (ids,),
        )
        return [destination_row(r) for r in rows]

    async def set_destination_status(
        self,
        tenant_id: TenantId,
        destination_id: DestinationId,
        status: DestinationStatus,
        reason: str | None,
    ) -> None:
        await self._db.write(
            "UPDATE destinations SET status = %s, disabled_reason = %s"
            " WHERE tenant_id = %s AND id = %s",
            (status.value, reason, tenant_id, destination_id),
        )

    async def update_destination(
        self, destination: Destination, *, secret_ciphertext: bytes | None = None
    ) -> bool:
        d = destination
        changed = await self._db.write(
            f"UPDATE destinations SET {set_clause(DESTINATION_SETTINGS, '%s')},"
            " secret_ct = COALESCE(%s, secret_ct) WHERE tenant_id = %s AND id = %s",
            (*destination_settings(d), secret_ciphertext, d.tenant_id, d.id),
        )
        return bool(changed)

    async def delete_destination(self, tenant_id: TenantId, destination_id: DestinationId) -> bool:
        changed = await self._db.write(
            "DELETE FROM destinations WHERE tenant_id = %s AND id = %s",
            (tenant_id, destination_id),
        )
        return bool(changed)

    async def rotate_secret(
        self,
        tenant_id: TenantId,
        destination_id: DestinationId,
        secret_ciphertext: bytes,
        *,
        previous_expires_at_ms: int | None,
    ) -> bool:
        # One statement: the right-hand secret_ct is the value before this update.
        changed = await self._db.write(
            "UPDATE destinations SET prev_secret_ct = CASE WHEN %s THEN secret_ct END,"
            " prev_secret_expires_at_ms = %s, secret_ct = %s"
            " WHERE tenant_id = %s AND id = %s",
            (
                previous_expires_at_ms is not None,
                previous_expires_at_ms,
                secret_ciphertext,
                tenant_id,
                destination_id,
            ),
        )
        return bool(changed)

    async def previous_secret(
        self, tenant_id: TenantId, destination_id: DestinationId, *, now_ms: int
    ) -> PreviousSecret | None:
        row = await self._db.fetch_one(
            "SELECT prev_secret_ct, prev_secret_expires_at_ms FROM destinations"
            " WHERE tenant_id = %s AND id = %s AND prev_secret_ct IS NOT NULL"
            " AND prev_secret_expires_at_ms > %s",
            (tenant_id, destination_id, now_ms),
        )
        return PreviousSecret(ciphertext=row[0], expires_at_ms=row[1]) if row else None
