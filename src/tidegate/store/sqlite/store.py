"""SqliteStore: the embedded store, one SQLite file (WAL, group commit), a second file
of dedupe claims for the router (claims.py) and a third for the audit chain (audit.py)."""

from __future__ import annotations

from pathlib import Path

from tidegate.embedded import sqlite_path
from tidegate.store.sqlite.audit import SqliteAuditStore, open_audit
from tidegate.store.sqlite.claims import FLUSH_CLAIMS, Claims, claims_path
from tidegate.store.sqlite.database import open_database
from tidegate.store.sqlite.deliveries import SqliteDeliveryStore
from tidegate.store.sqlite.destinations import SqliteDestinationStore
from tidegate.store.sqlite.events import SqliteEventStore
from tidegate.store.sqlite.tenants import SqliteTenantStore
from tidegate.store.sqlite.usage import SqliteUsageStore


class SqliteStore:
    """Implements Store: one aggregate store per Protocol, sharing one embedded database
    (the audit chain has its own)."""

    def __init__(self, path: Path, *, flush_claims_at: int = FLUSH_CLAIMS) -> None:
        """`flush_claims_at`: dedupe claims kept in memory before they go to the claims
        file (claims.py)."""
        self._db = open_database(path)
        self._claims = Claims(self._db, claims_path(path), flush_at=flush_claims_at)
        self._tenants = SqliteTenantStore(self._db)
        self._destinations = SqliteDestinationStore(self._db)
        self._events = SqliteEventStore(self._db, self._claims)
        self._deliveries = SqliteDeliveryStore(self._db)
        self._usage = SqliteUsageStore(self._db)
        self._audit_db = open_audit(path)
        self._audit = SqliteAuditStore(self._audit_db, self._db)

    @classmethod
    def from_url(cls, url: str) -> SqliteStore:
        return cls(sqlite_path(url, "TIDEGATE_STORE_URL"))

    @property
    def tenants(self) -> SqliteTenantStore:
        return self._tenants

    @property
    def destinations(self) -> SqliteDestinationStore:
        return self._destinations

    @property
    def events(self) -> SqliteEventStore:
        return self._events

    @property
    def deliveries(self) -> SqliteDeliveryStore:
        return self._deliveries

    @property
    def usage(self) -> SqliteUsageStore:
        return self._usage

    @property
    def audit(self) -> SqliteAuditStore:
        return self._audit

    @property
    def exclusive_worker(self) -> bool:
        return True

    async def ping(self) -> None:
        await self._db.read(lambda c: c.execute("SELECT 1").fetchone())

    async def aclose(self) -> None:
        await self._claims.aclose()
        await self._audit_db.aclose()
        await self._db.aclose()
