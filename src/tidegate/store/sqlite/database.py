"""The embedded store's database file: its schema, and what every aggregate's SQL shares."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

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


def placeholders(n: int) -> str:
    return ",".join("?" * n)


T = TypeVar("T")
# Bound parameters per statement, well under SQLite's limit (32,766 since 3.32).
MAX_PARAMETERS = 4_000


def row_chunks(items: Sequence[T], columns: int) -> Iterator[Sequence[T]]:
    """`items` in runs for multi-row statements of `columns` parameters a row, each run a
    power of two long and under MAX_PARAMETERS parameters.

    A multi-row statement's SQL depends on its row count. With runs of any length nearly
    every batch compiled its statements anew (the router's batches came in 241 lengths
    in 519 batches of the bench), and compiling a statement costs about as much as
    running it; with powers of two a dozen shapes per statement stay in the connection's
    statement cache, for a few more statements per batch."""
    cap = 1 << (max(1, MAX_PARAMETERS // columns).bit_length() - 1)
    start, count = 0, len(items)
    while start < count:
        size = min(cap, 1 << ((count - start).bit_length() - 1))
        yield items[start : start + size]
        start += size


def execute_rows(
    c: sqlite3.Connection, sql: str, rows: Sequence[Sequence[Any]], *, first: Sequence[Any] = ()
) -> list[Any]:
    """Run `sql` over `rows` as a few multi-row statements, not one per row: `{values}` in
    `sql` becomes a VALUES list of a run of rows (`row_chunks`), bound after `first`.
    Returns what the statements return (RETURNING, or a SELECT), in order.

    Each statement gives up the GIL and takes it back, and the writer thread waits for it
    behind the event loop's thread: a statement per row made a flush of 100,000 dedupe
    claims take 2.3 s under load (docs/architecture.md §4)."""
    if not rows:
        return []
    columns = len(rows[0])
    returned: list[Any] = []
    for run in row_chunks(rows, columns):
        returned += c.execute(
            sql.format(values=row_values(len(run), columns)),
            [*first, *(value for row in run for value in row)],
        ).fetchall()
    return returned


@functools.lru_cache(maxsize=256)  # a dozen shapes per column count, by `row_chunks`
def row_values(count: int, columns: int) -> str:
    """The VALUES list of a multi-row statement: `count` rows of `columns` placeholders."""
    row = f"({placeholders(columns)})"
    return ",".join([row] * count)


def require_tenant(c: sqlite3.Connection, tenant_id: TenantId) -> None:
    """Raise Conflict unless the tenant exists (inside the caller's write transaction)."""
    if not c.execute("SELECT 1 FROM tenants WHERE id = ?", (tenant_id,)).fetchone():
        raise Conflict(f"tenant {tenant_id} does not exist")
