"""Versioned schema migrations: numbered SQL files per engine, applied in order.

`<engine>/NNNN_name.sql` holds one migration; NNNN is its version. The engine
applies the pending ones in one transaction and records each in its
`schema_migrations` table. Migrations are expand/contract (README.md in this folder).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from importlib import resources
from urllib.parse import urlsplit

import msgspec

from tidegate.errors import ConfigError

__all__ = ["Migration", "MigrationReport", "load_migrations", "migrate_store", "pending"]

_FILE = re.compile(r"(\d{4})_(\w+)\.sql")


class Migration(msgspec.Struct, frozen=True):
    version: int
    name: str
    sql: str


class MigrationReport(msgspec.Struct, frozen=True):
    """What `migrate_store` did: `applied` now, and the version the schema is at."""

    engine: str
    applied: tuple[int, ...]
    version: int | None  # None: the engine has no versioned migrations (SQLite)


def load_migrations(engine: str) -> list[Migration]:
    """Every migration shipped for `engine`, by version; a gap or a clash is a packaging bug."""
    folder = resources.files(__name__).joinpath(engine)
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = _FILE.fullmatch(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise ConfigError(
            f"{engine} migrations are not numbered 1..N: {[m.version for m in found]}"
        )
    return found


def pending(migrations: list[Migration], applied: Collection[int]) -> list[Migration]:
    return [m for m in migrations if m.version not in applied]


async def migrate_store(url: str) -> MigrationReport:
    """Apply the pending migrations of the store at `url` (`tidegate migrate`)."""
    match urlsplit(url).scheme:
        case "sqlite":
            # The embedded store creates its schema when it opens: nothing is versioned.
            return MigrationReport(engine="sqlite", applied=(), version=None)
        case "postgresql" | "postgres":
            from tidegate.store.postgres import PostgresStore

            store = PostgresStore.from_url(url)
            try:
                applied, version = await store.migrate()
            finally:
                await store.aclose()
            return MigrationReport(engine="postgresql", applied=tuple(applied), version=version)
        case other:
            raise ConfigError(
                f"TIDEGATE_STORE_URL: unsupported scheme {other!r} (sqlite, postgresql)"
            )
