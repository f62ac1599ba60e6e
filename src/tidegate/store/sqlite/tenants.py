"""Tenants, their sources (write keys), API keys and data keys, on SQLite."""

from __future__ import annotations

import sqlite3

from tidegate.embedded import EmbeddedDatabase
from tidegate.ids import now_ms as clock_ms
from tidegate.model import Source, SourceId, Tenant, TenantId, TransferConsent
from tidegate.store.base import DataKey
from tidegate.store.rows import (
    CONSENT_COLUMNS,
    SOURCE_BY_KEY_WHERE,
    SOURCE_COLUMNS,
    consent_row,
    consent_values,
    source_row,
    tenant_row,
)
from tidegate.store.sqlite.database import require_tenant


class SqliteTenantStore:
    """Implements TenantStore (and DataKeyStore) on the embedded database."""

    def __init__(self, db: EmbeddedDatabase) -> None:
        self._db = db

    async def create_tenant(self, tenant: Tenant) -> None:
        await self._db.write(
            lambda c: c.execute(
                "INSERT INTO tenants (id, name, region, created_at_ms) VALUES (?, ?, ?, ?)",
                (tenant.id, tenant.name, tenant.region, tenant.created_at_ms),
            )
        )

    async def get_tenant(self, tenant_id: TenantId) -> Tenant | None:
        row = await self._db.read(
            lambda c: c.execute(
                "SELECT id, name, region, created_at_ms FROM tenants WHERE id = ?", (tenant_id,)
            ).fetchone()
        )
        return tenant_row(row) if row else None

    async def list_tenants(self) -> list[Tenant]:
        rows = await self._db.read(
            lambda c: c.execute(
                "SELECT id, name, region, created_at_ms FROM tenants ORDER BY id"
            ).fetchall()
        )
        return [tenant_row(r) for r in rows]

    async def create_source(self, source: Source, write_key_hash: str) -> None:
        def insert(c: sqlite3.Connection) -> None:
            require_tenant(c, source.tenant_id)
            c.execute(
                "INSERT INTO sources (id, tenant_id, name, write_key_hash, created_at_ms)"
                " VALUES (?, ?, ?, ?, ?)",
                (source.id, source.tenant_id, source.name, write_key_hash, source.created_at_ms),
            )

        await self._db.write(insert)

    async def source_by_key(self, write_key_hash: str) -> Source | None:
        row = await self._db.read(
            lambda c: c.execute(
                f"SELECT {SOURCE_COLUMNS} FROM sources WHERE {SOURCE_BY_KEY_WHERE.format(p='?')}",
                (write_key_hash, write_key_hash, clock_ms()),
            ).fetchone()
        )
        return source_row(row) if row else None

    async def list_sources(self, tenant_id: TenantId) -> list[Source]:
        rows = await self._db.read(
            lambda c: c.execute(
                f"SELECT {SOURCE_COLUMNS} FROM sources"
                " WHERE tenant_id = ? AND revoked_at_ms IS NULL ORDER BY id",
                (tenant_id,),
            ).fetchall()
        )
        return [source_row(r) for r in rows]

    async def rotate_write_key(
        self,
        tenant_id: TenantId,
        source_id: SourceId,
        write_key_hash: str,
        *,
        now_ms: int,
        overlap_ms: int,
    ) -> bool:
        keep_previous = overlap_ms > 0
        changed = await self._db.write(
            lambda c: (
                c.execute(
                    "UPDATE sources SET prev_write_key_hash = CASE WHEN ? THEN write_key_hash END,"
                    " prev_key_expires_at_ms = ?, write_key_hash = ?"
                    " WHERE tenant_id = ? AND id = ? AND revoked_at_ms IS NULL",
                    (
                        keep_previous,
                        now_ms + overlap_ms if keep_previous else None,
                        write_key_hash,
                        tenant_id,
                        source_id,
                    ),
                ).rowcount
            )
        )
        return bool(changed)

    async def revoke_source(self, tenant_id: TenantId, source_id: SourceId, *, now_ms: int) -> bool:
        changed = await self._db.write(
            lambda c: (
                c.execute(
                    "UPDATE sources SET revoked_at_ms = ?"
                    " WHERE tenant_id = ? AND id = ? AND revoked_at_ms IS NULL",
                    (now_ms, tenant_id, source_id),
                ).rowcount
            )
        )
        return bool(changed)

    async def create_api_key(self, tenant_id: TenantId, key_hash: str, name: str) -> None:
        def insert(c: sqlite3.Connection) -> None:
            require_tenant(c, tenant_id)
            c.execute(
                "INSERT INTO api_keys (key_hash, tenant_id, name, created_at_ms)"
                " VALUES (?, ?, ?, ?)",
                (key_hash, tenant_id, name, clock_ms()),
            )

        await self._db.write(insert)

    async def tenant_by_api_key(self, key_hash: str) -> TenantId | None:
        row = await self._db.read(
            lambda c: c.execute(
                "SELECT tenant_id FROM api_keys WHERE key_hash = ? AND revoked_at_ms IS NULL",
                (key_hash,),
            ).fetchone()
        )
        return TenantId(row[0]) if row else None

    async def revoke_api_key(self, tenant_id: TenantId, key_hash: str, *, now_ms: int) -> bool:
        changed = await self._db.write(
            lambda c: (
                c.execute(
                    "UPDATE api_keys SET revoked_at_ms = ?"
                    " WHERE tenant_id = ? AND key_hash = ? AND revoked_at_ms IS NULL",
                    (now_ms, tenant_id, key_hash),
                ).rowcount
            )
        )
        return bool(changed)

    async def data_keys(self, tenant_id: TenantId) -> list[DataKey]:
        rows = await self._db.read(
            lambda c: c.execute(
                "SELECT version, wrapped FROM data_keys WHERE tenant_id = ? ORDER BY version",
                (tenant_id,),
            ).fetchall()
        )
        return [DataKey(version=v, wrapped=w) for v, w in rows]

    async def add_data_key(self, tenant_id: TenantId, wrapped: bytes, key_ring_id: str) -> None:
        def insert(c: sqlite3.Connection) -> None:
            (version,) = c.execute(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM data_keys WHERE tenant_id = ?",
                (tenant_id,),
            ).fetchone()
            c.execute(
                "INSERT INTO data_keys (tenant_id, version, wrapped, key_ring_id, created_at_ms)"
                " VALUES (?, ?, ?, ?, ?)",
                (tenant_id, version, wrapped, key_ring_id, clock_ms()),
            )

        await self._db.write(insert)

    async def put_transfer_consent(self, consent: TransferConsent) -> None:
        def upsert(c: sqlite3.Connection) -> None:
            require_tenant(c, consent.tenant_id)
            c.execute(
                f"INSERT INTO transfer_consents ({CONSENT_COLUMNS}) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (tenant_id, region) DO UPDATE SET reference = excluded.reference,"
                " recorded_by = excluded.recorded_by, recorded_at_ms = excluded.recorded_at_ms",
                consent_values(consent),
            )

        await self._db.write(upsert)

    async def delete_transfer_consent(self, tenant_id: TenantId, region: str) -> bool:
        deleted = await self._db.write(
            lambda c: (
                c.execute(
                    "DELETE FROM transfer_consents WHERE tenant_id = ? AND region = ?",
                    (tenant_id, region),
                ).rowcount
            )
        )
        return bool(deleted)

    async def transfer_consents(self, tenant_id: TenantId) -> list[TransferConsent]:
        rows = await self._db.read(
            lambda c: c.execute(
                f"SELECT {CONSENT_COLUMNS} FROM transfer_consents WHERE tenant_id = ?"
                " ORDER BY region",
                (tenant_id,),
            ).fetchall()
        )
        return [consent_row(r) for r in rows]
