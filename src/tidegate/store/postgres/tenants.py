"""Tenants, their sources (write keys), API keys and data keys, on PostgreSQL."""

from __future__ import annotations

from tidegate.ids import now_ms as clock_ms
from tidegate.model import Source, SourceId, Tenant, TenantId, TransferConsent
from tidegate.store.base import DataKey
from tidegate.store.postgres.database import PostgresDatabase, require_tenant
from tidegate.store.rows import (
    CONSENT_COLUMNS,
    SOURCE_BY_KEY_WHERE,
    SOURCE_COLUMNS,
    consent_row,
    consent_values,
    source_row,
    tenant_row,
)


class PostgresTenantStore:
    """Implements TenantStore (and DataKeyStore) on PostgreSQL."""

    def __init__(self, db: PostgresDatabase) -> None:
        self._db = db

    async def create_tenant(self, tenant: Tenant) -> None:
        async with self._db.transaction() as conn:
            await conn.execute(
                "INSERT INTO tenants (id, name, region, created_at_ms) VALUES (%s, %s, %s, %s)",
                (tenant.id, tenant.name, tenant.region, tenant.created_at_ms),
            )

    async def get_tenant(self, tenant_id: TenantId) -> Tenant | None:
        row = await self._db.fetch_one(
            "SELECT id, name, region, created_at_ms FROM tenants WHERE id = %s", (tenant_id,)
        )
        return tenant_row(row) if row else None

    async def list_tenants(self) -> list[Tenant]:
        rows = await self._db.fetch_all(
            "SELECT id, name, region, created_at_ms FROM tenants ORDER BY id"
        )
        return [tenant_row(r) for r in rows]

    async def create_source(self, source: Source, write_key_hash: str) -> None:
        async with self._db.transaction() as conn:
            await require_tenant(conn, source.tenant_id)
            await conn.execute(
                "INSERT INTO sources (id, tenant_id, name, write_key_hash, created_at_ms)"
                " VALUES (%s, %s, %s, %s, %s)",
                (source.id, source.tenant_id, source.name, write_key_hash, source.created_at_ms),
            )

    async def source_by_key(self, write_key_hash: str) -> Source | None:
        row = await self._db.fetch_one(
            f"SELECT {SOURCE_COLUMNS} FROM sources WHERE {SOURCE_BY_KEY_WHERE.format(p='%s')}",
            (write_key_hash, write_key_hash, clock_ms()),
        )
        return source_row(row) if row else None

    async def list_sources(self, tenant_id: TenantId) -> list[Source]:
        rows = await self._db.fetch_all(
            f"SELECT {SOURCE_COLUMNS} FROM sources"
            " WHERE tenant_id = %s AND revoked_at_ms IS NULL ORDER BY id",
            (tenant_id,),
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
            "UPDATE sources SET prev_write_key_hash = CASE WHEN %s THEN write_key_hash END,"
            " prev_key_expires_at_ms = %s, write_key_hash = %s"
            " WHERE tenant_id = %s AND id = %s AND revoked_at_ms IS NULL",
            (
                keep_previous,
                now_ms + overlap_ms if keep_previous else None,
                write_key_hash,
                tenant_id,
                source_id,
            ),
        )
        return bool(changed)

    async def revoke_source(self, tenant_id: TenantId, source_id: SourceId, *, now_ms: int) -> bool:
        changed = await self._db.write(
            "UPDATE sources SET revoked_at_ms = %s"
            " WHERE tenant_id = %s AND id = %s AND revoked_at_ms IS NULL",
            (now_ms, tenant_id, source_id),
        )
        return bool(changed)

    async def create_api_key(self, tenant_id: TenantId, key_hash: str, name: str) -> None:
        async with self._db.transaction() as conn:
            await require_tenant(conn, tenant_id)
            await conn.execute(
                "INSERT INTO api_keys (key_hash, tenant_id, name, created_at_ms)"
                " VALUES (%s, %s, %s, %s)",
                (key_hash, tenant_id, name, clock_ms()),
            )

    async def tenant_by_api_key(self, key_hash: str) -> TenantId | None:
        row = await self._db.fetch_one(
            "SELECT tenant_id FROM api_keys WHERE key_hash = %s AND revoked_at_ms IS NULL",
            (key_hash,),
        )
        return TenantId(row[0]) if row else None

    async def revoke_api_key(self, tenant_id: TenantId, key_hash: str, *, now_ms: int) -> bool:
        changed = await self._db.write(
            "UPDATE api_keys SET revoked_at_ms = %s"
            " WHERE tenant_id = %s AND key_hash = %s AND revoked_at_ms IS NULL",
            (now_ms, tenant_id, key_hash),
        )
        return bool(changed)

    async def data_keys(self, tenant_id: TenantId) -> list[DataKey]:
        rows = await self._db.fetch_all(
            "SELECT version, wrapped FROM data_keys WHERE tenant_id = %s ORDER BY version",
            (tenant_id,),
        )
        return [DataKey(version=v, wrapped=w) for v, w in rows]

    async def add_data_key(self, tenant_id: TenantId, wrapped: bytes, key_ring_id: str) -> None:
        # One statement: two processes adding at once compute the same version; the
        # later insert is ignored, as the DataKeyStore contract says.
        async with self._db.transaction() as conn:
            await conn.execute(
                "INSERT INTO data_keys (tenant_id, version, wrapped, key_ring_id, created_at_ms)"
                " SELECT %s, COALESCE(MAX(version), 0) + 1, %s, %s, %s"
                " FROM data_keys WHERE tenant_id = %s"
                " ON CONFLICT (tenant_id, version) DO NOTHING",
                (tenant_id, wrapped, key_ring_id, clock_ms(), tenant_id),
            )

    async def put_transfer_consent(self, consent: TransferConsent) -> None:
        async with self._db.transaction() as conn:
            await require_tenant(conn, consent.tenant_id)
            await conn.execute(
                f"INSERT INTO transfer_consents ({CONSENT_COLUMNS}) VALUES (%s, %s, %s, %s, %s)"
                " ON CONFLICT (tenant_id, region) DO UPDATE SET reference = excluded.reference,"
                " recorded_by = excluded.recorded_by, recorded_at_ms = excluded.recorded_at_ms",
                consent_values(consent),
            )

    async def delete_transfer_consent(self, tenant_id: TenantId, region: str) -> bool:
        deleted = await self._db.write(
            "DELETE FROM transfer_consents WHERE tenant_id = %s AND region = %s",
            (tenant_id, region),
        )
        return bool(deleted)

    async def transfer_consents(self, tenant_id: TenantId) -> list[TransferConsent]:
        rows = await self._db.fetch_all(
            f"SELECT {CONSENT_COLUMNS} FROM transfer_consents WHERE tenant_id = %s ORDER BY region",
            (tenant_id,),
        )
        return [consent_row(r) for r in rows]
