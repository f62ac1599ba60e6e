"""PostgreSQL schema migrations: versioned, idempotent, safe to run concurrently."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from importlib import resources

import psycopg
import pytest

from tidegate.errors import BackendUnavailable
from tidegate.ids import new_tenant_id, now_ms
from tidegate.model import Tenant
from tidegate.store import open_store
from tidegate.store.migrations import load_migrations, migrate_store

LATEST = len(load_migrations("postgres"))


def _rows(url: str, query: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(query.encode()).fetchall()


async def test_migrating_twice_applies_each_version_once(postgres_url: str) -> None:
    first = await migrate_store(postgres_url)
    second = await migrate_store(postgres_url)
    assert first.applied == tuple(range(1, LATEST + 1)) and first.version == LATEST
    assert second.applied == () and second.version == LATEST


async def test_concurrent_migrations_both_succeed(postgres_url: str) -> None:
    """Two processes migrating at once: one applies, the other waits and finds it done."""
    reports = await asyncio.gather(*(migrate_store(postgres_url) for _ in range(3)))
    applied = sorted(v for r in reports for v in r.applied)
    assert applied == list(range(1, LATEST + 1))
    assert {r.version for r in reports} == {LATEST}


async def test_schema_migrations_lists_applied_versions(postgres_url: str) -> None:
    await migrate_store(postgres_url)
    rows = _rows(postgres_url, "SELECT version, name, applied_at FROM schema_migrations")
    assert [(v, n) for v, n, _ in rows] == [
        (m.version, m.name) for m in load_migrations("postgres")
    ]
    assert all(at is not None for _, _, at in rows)


async def test_store_migrates_on_first_use(postgres_url: str) -> None:
    store = open_store(postgres_url)
    try:
        await store.ping()
    finally:
        await store.aclose()
    assert _rows(postgres_url, "SELECT max(version) FROM schema_migrations") == [(LATEST,)]


async def test_store_without_migrate_refuses_an_empty_database(postgres_url: str) -> None:
    """migrate=false on an unmigrated database names the command that fixes it."""
    store = open_store(f"{postgres_url}?migrate=false")
    try:
        with pytest.raises(BackendUnavailable, match="tidegate migrate"):
            await store.ping()
        await migrate_store(postgres_url)
        tenant = Tenant(id=new_tenant_id(), name="t", region="eu", created_at_ms=now_ms())
        await store.tenants.create_tenant(tenant)  # ready once migrated: no restart needed
        assert await store.tenants.get_tenant(tenant.id) == tenant
    finally:
        await store.aclose()
    assert _rows(postgres_url, "SELECT count(*) FROM tenants") == [(1,)]


_SQLITE_ONLY = frozenset({"dedupe_journal"})


async def test_postgres_schema_has_every_sqlite_table_column_and_index(postgres_url: str) -> None:
    await migrate_store(postgres_url)
    lite = sqlite3.connect(":memory:")
    lite.executescript(resources.files("tidegate.store").joinpath("schema_sqlite.sql").read_text())
    expected = {
        (table, column)
        for (table,) in lite.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        for (_, column, *_rest) in lite.execute(f"PRAGMA table_info({table})")
    }
    indexes = {
        name
        for (name,) in lite.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
        )
    }
    lite.close()
    # The embedded store's own: the journal of its dedupe claims file (store/sqlite/claims.py).
    expected = {(table, column) for table, column in expected if table not in _SQLITE_ONLY}
    columns = set(
        _rows(
            postgres_url,
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = 'public'",
        )
    )
    pg_indexes = {n for (n,) in _rows(postgres_url, "SELECT indexname FROM pg_indexes")}
    assert expected - columns == set()
    assert indexes - pg_indexes == set()


def test_migrate_command_prints_applied_versions(postgres_url: str) -> None:
    def migrate() -> dict[str, object]:
        done = subprocess.run(
            [sys.executable, "-m", "tidegate", "migrate", "--json"],
            env={**os.environ, "TIDEGATE_STORE_URL": postgres_url},
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        result: dict[str, object] = json.loads(done.stdout)
        return result

    assert migrate() == {
        "engine": "postgresql",
        "applied": list(range(1, LATEST + 1)),
        "version": LATEST,
    }
    assert migrate() == {"engine": "postgresql", "applied": [], "version": LATEST}
