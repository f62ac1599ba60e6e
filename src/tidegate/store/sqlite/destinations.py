"""Destinations and their signing secrets, on SQLite."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from tidegate.embedded import EmbeddedDatabase
from tidegate.model import Destination, DestinationId, DestinationStatus, TenantId
from tidegate.store.base import PreviousSecret
from tidegate.store.rows import (
    DESTINATION_COLUMNS,
    DESTINATION_SETTINGS,
    destination_row,
    destination_settings,
    destination_values,
    set_clause,
)
from tidegate.store.sqlite.database import placeholders, require_tenant


class SqliteDestinationStore:
    """Implements DestinationStore on the embedded database."""

    def __init__(self, db: EmbeddedDatabase) -> None:
        self._db = db

    async def create_destination(self, destination: Destination) -> None:
        d = destination

        def insert(c: sqlite3.Connection) -> None:
            require_tenant(c, d.tenant_id)
            c.execute(
                f"INSERT INTO destinations ({DESTINATION_COLUMNS}) VALUES ({placeholders(15)})",
                destination_values(d),
            )

        await self._db.write(insert)

    async def get_destination(
        self, tenant_id: TenantId, destination_id: DestinationId
    ) -> Destination | None:
        row = await self._db.read(
            lambda c: c.execute(
                f"SELECT {DESTINATION_COLUMNS} FROM destinations WHERE tenant_id = ? AND id = ?",
                (tenant_id, destination_id),
            ).fetchone()
        )
        return destination_row(row) if row else None

    async def list_destinations(self, tenant_id: TenantId) -> list[Destination]:
        rows = await self._db.read(
            lambda c: c.execute(
                f"SELECT {DESTINATION_COLUMNS} FROM destinations WHERE tenant_id = ? ORDER BY id",
                (tenant_id,),
            ).fetchall()
        )
        return [destination_row(r) for r in rows]

    async def enabled_destinations(self, tenant_ids: Sequence[TenantId]) -> list[Destination]:
        ids = list(dict.fromkeys(tenant_ids))
        if not ids:
            return []
        rows = self._db.read_now(
            lambda c: c.execute(
                f"SELECT {DESTINATION_COLUMNS} FROM destinations"
                f" WHERE tenant_id IN ({placeholders(len(ids))}) AND status = 'enabled'"
                " ORDER BY id",
                ids,
            ).fetchall()
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
            lambda c: c.execute(
                "UPDATE destinations SET status = ?, disabled_reason = ?"
                " WHERE tenant_id = ? AND id = ?",
                (status.value, reason, tenant_id, destination_id),
            )
        )

    async def update_destination(
        self, destination: Destination, *, secret_ciphertext: bytes | None = None
    ) -> bool:
        d = destination
        assignments = set_clause(DESTINATION_SETTINGS, "?")
        changed = await self._db.write(
            lambda c: (
                c.execute(
                    f"UPDATE destinations SET {assignments}, secret_ct = COALESCE(?, secret_ct)"
                    " WHERE tenant_id = ? AND id = ?",
                    (*destination_settings(d), secret_ciphertext, d.tenant_id, d.id),
                ).rowcount
            )
        )
        return bool(changed)

    async def delete_destination(self, tenant_id: TenantId, destination_id: DestinationId) -> bool:
        changed = await self._db.write(
            lambda c: (
                c.execute(
                    "DELETE FROM destinations WHERE tenant_id = ? AND id = ?",
                    (tenant_id, destination_id),
                ).rowcount
            )
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
        keep_previous = previous_expires_at_ms is not None
        # One statement: the right-hand secret_ct is the value before this update.
        changed = await self._db.write(
            lambda c: (
                c.execute(
                    "UPDATE destinations SET prev_secret_ct = CASE WHEN ? THEN secret_ct END,"
                    " prev_secret_expires_at_ms = ?, secret_ct = ?"
                    " WHERE tenant_id = ? AND id = ?",
                    (
                        keep_previous,
                        previous_expires_at_ms,
                        secret_ciphertext,
                        tenant_id,
                        destination_id,
                    ),
                ).rowcount
            )
        )
        return bool(changed)

    async def previous_secret(
        self, tenant_id: TenantId, destination_id: DestinationId, *, now_ms: int
    ) -> PreviousSecret | None:
        row = await self._db.read(
            lambda c: c.execute(
                "SELECT prev_secret_ct, prev_secret_expires_at_ms FROM destinations"
                " WHERE tenant_id = ? AND id = ? AND prev_secret_ct IS NOT NULL"
                " AND prev_secret_expires_at_ms > ?",
                (tenant_id, destination_id, now_ms),
            ).fetchone()
        )
        return PreviousSecret(ciphertext=row[0], expires_at_ms=row[1]) if row else None
