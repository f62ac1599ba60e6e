"""The embedded store's database file: its schema, and what every aggregate's SQL shares."""

from __future__ import annotations

import sqlite3
from importlib import resources
from pathlib import Path

from tidegate.embedded import EmbeddedDatabase, connect
from tidegate.errors import Conflict
from tidegate.model import TenantId

# Columns added to tables after they first shipped. The schema's CREATE TABLE IF NOT
# EXISTS leaves an existing table as it was, so an existing file gets them here, before
# the schema runs (its indexes may name them). PostgreSQL gets them from migrations.
_ADDED_COLUMNS = (
    ("sources", "prev_write_key_hash", "TEXT"),
    ("sources", "prev_key_expires_at_ms", "INTEGER"),
    ("destinations", "prev_secret_ct", "BLOB"),
    ("destinations", "prev_secret_expires_at_ms", "INTEGER"),
    ("destinations", "kind", "TEXT NOT NULL DEFAULT 'webhook'"),
    ("destinations", "config", "TEXT"),
)


# The store writer's page cache: 8 MiB, where SQLite's default is 2 MiB (a transaction
# that dirties more pages than its cache holds writes some of them out before its commit,
# and reads them back). It was 32 MiB while the dedupe claims were a table of this file,
# whose HMAC keys put each claim on a random page (claims.py); with them gone, 8 MiB
# measured the same CPU per event (bench/micro.py store) and kept process 0's RSS at
# 145-162 MiB where 32 MiB had it at 168-185 (ninth benchmark session).
WRITER_CACHE_KIB = 8 * 1024


def open_database(path: Path) -> EmbeddedDatabase:
    """The store file at `path`, created or brought up to the current schema."""
    schema = resources.files("tidegate.store").joinpath("schema_sqlite.sql").read_text()
    _add_columns(path)
    return EmbeddedDatabase(path, schema, writer_cache_kib=WRITER_CACHE_KIB)


def _add_columns(path: Path) -> None:
    """Give an existing database file the columns of _ADDED_COLUMNS it lacks (idempotent)."""
    if not path.exists():
        return  # a new file: the schema creates every column
    conn = connect(path)
    try:
        # IMMEDIATE: two processes opening one old file at once add each column once.
        conn.execute("BEGIN IMMEDIATE")
        for table, column, declaration in _ADDED_COLUMNS:
            present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            if present and column not in present:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
        conn.execute("COMMIT")
    finally:
        conn.close()


def require_tenant(c: sqlite3.Connection, tenant_id: TenantId) -> None:
    """Raise Conflict unless the tenant exists (inside the caller's write transaction)."""
    if not c.execute("SELECT 1 FROM tenants WHERE id = ?", (tenant_id,)).fetchone():
        raise Conflict(f"tenant {tenant_id} does not exist")
