"""Rollback safety: the previous release's SQL still works on the newest schema (ADR 0010).

`queries/<engine>-level-NNNN.json` holds every statement the release whose newest
migration was NNNN sent to its store, with parameters and expected outcomes
(`python -m tests.contract.migration_queries capture`). For each level L below the
newest migration N, the statements are replayed in order:

- on a fresh database brought to N by `tidegate migrate` (`migrate_store`): every
  statement of the old release must succeed and answer as it did on its own schema
  (same row count, columns and rows; writes too: an insert that a new constraint turns
  into a no-op is a break);
- across a rolling deploy: a database at level L runs the first part of the old
  release's work (until every table has rows), `tidegate migrate` upgrades it to N with
  that data in place, and the old release carries on, as it does during a rollout or a
  rollback;
- and, as the control, on a database at level L itself, built from the migrations this
  code ships (so a failure there means a broken corpus or an edited shipped migration,
  not an incompatible new one).

SQLite: the embedded default has no versioned migrations; it upgrades its file when it
opens (`CREATE ... IF NOT EXISTS` plus `_ADDED_COLUMNS`). Rolling back means the older
release opening a file the newer one upgraded, so its corpus (which includes its own
schema bootstrap and its reopen-time column check) is replayed on a file the current
store created, and across a file the current store opened mid-run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.contract.migration_queries import (
    QUERIES,
    Entry,
    corpus_path,
    load_corpus,
    problems,
    replay_postgres,
    replay_sqlite,
)
from tidegate.store import open_store
from tidegate.store.migrations import load_migrations, migrate_store

MIGRATIONS = load_migrations("postgres")
NEWEST = len(MIGRATIONS)
CAPTURE = "python -m tests.contract.migration_queries capture"


def _levels(engine: str) -> list[int]:
    return sorted(int(p.stem.rsplit("-", 1)[1]) for p in QUERIES.glob(f"{engine}-level-*.json"))


def _older(engine: str) -> list[int]:
    return [level for level in _levels(engine) if level < NEWEST]


def _corpus(engine: str, level: int) -> tuple[dict[str, Any], list[Entry]]:
    corpus = load_corpus(corpus_path(engine, level))
    assert corpus["level"] == level and corpus["engine"] == engine
    return corpus, corpus["statements"]


def _assert_none(found: Sequence[str], what: str) -> None:
    if found:
        shown = "\n".join(found[:12])
        more = f"\n... and {len(found) - 12} more" if len(found) > 12 else ""
        pytest.fail(f"{len(found)} statements of {what}:\n{shown}{more}", pytrace=False)


def test_previous_level_is_frozen() -> None:
    """Adding migration N needs the corpus of N-1, captured from the code before it."""
    if NEWEST < 2:
        return
    for engine in ("postgres", "sqlite"):
        path = corpus_path(engine, NEWEST - 1)
        assert path.exists(), (
            f"{path.name} is missing: before adding migration {NEWEST:04d}, freeze level"
            f" {NEWEST - 1:04d} with `{CAPTURE}` run on the code without it (ADR 0010)"
        )


# -- PostgreSQL ---------------------------------------------------------------------------


def _migrate_to(url: str, level: int) -> None:
    """A database at `level`, as the release that shipped it left it (the store's bookkeeping)."""
    with psycopg.connect(url) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
            " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        for migration in MIGRATIONS[:level]:
            conn.execute(migration.sql.encode())
            conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )


def _tidegate_migrate(url: str, level: int) -> None:
    report = asyncio.run(migrate_store(url))
    assert report.applied == tuple(range(level + 1, NEWEST + 1)) and report.version == NEWEST


@pytest.mark.parametrize("level", _levels("postgres"))
def test_postgres_corpus_replays_at_its_own_level(postgres_url: str, level: int) -> None:
    corpus, statements = _corpus("postgres", level)
    assert corpus["migrations"] == [f"{m.version:04d}_{m.name}" for m in MIGRATIONS[:level]]
    _migrate_to(postgres_url, level)
    got = replay_postgres(postgres_url, statements)
    _assert_none(problems(statements, got), f"level {level:04d} fail on their own schema")


@pytest.mark.parametrize("level", _older("postgres"))
def test_postgres_previous_release_works_on_the_newest_schema(
    postgres_url: str, level: int
) -> None:
    _, statements = _corpus("postgres", level)
    _tidegate_migrate(postgres_url, 0)
    got = replay_postgres(postgres_url, statements)
    _assert_none(problems(statements, got), f"level {level:04d} break on level {NEWEST:04d}")


@pytest.mark.parametrize("level", _older("postgres"))
def test_postgres_previous_release_keeps_working_across_the_migration(
    postgres_url: str, level: int
) -> None:
    corpus, statements = _corpus("postgres", level)
    before, after = statements[: corpus["deploy_at"]], statements[corpus["deploy_at"] :]
    _migrate_to(postgres_url, level)
    found = problems(before, replay_postgres(postgres_url, before))
    _tidegate_migrate(postgres_url, level)  # on a database holding the old release's rows
    found += problems(after, replay_postgres(postgres_url, after))
    _assert_none(found, f"level {level:04d} break when migrated to {NEWEST:04d} mid-run")


# -- SQLite -------------------------------------------------------------------------------


def _open_current_store(path: Path) -> None:
    """What the current release does to the file when it starts: upgrade it in place."""

    async def open_and_close() -> None:
        store = open_store(f"sqlite:///{path}")
        try:
            await store.ping()
        finally:
            await store.aclose()

    asyncio.run(open_and_close())


@pytest.mark.parametrize("level", _levels("sqlite"))
def test_sqlite_corpus_replays_at_its_own_level(tmp_path: Path, level: int) -> None:
    _, statements = _corpus("sqlite", level)
    got = replay_sqlite(tmp_path / "store.db", statements)  # it creates its own schema
    _assert_none(problems(statements, got), f"level {level:04d} fail on their own schema")


@pytest.mark.parametrize("level", _older("sqlite"))
def test_sqlite_previous_release_works_on_a_file_the_current_one_created(
    tmp_path: Path, level: int
) -> None:
    _, statements = _corpus("sqlite", level)
    _open_current_store(tmp_path / "store.db")
    got = replay_sqlite(tmp_path / "store.db", statements)
    _assert_none(problems(statements, got), f"level {level:04d} break on level {NEWEST:04d}")


@pytest.mark.parametrize("level", _older("sqlite"))
def test_sqlite_previous_release_keeps_working_after_the_current_one_upgraded_its_file(
    tmp_path: Path, level: int
) -> None:
    corpus, statements = _corpus("sqlite", level)
    before, after = statements[: corpus["deploy_at"]], statements[corpus["deploy_at"] :]
    found = problems(before, replay_sqlite(tmp_path / "store.db", before))
    _open_current_store(tmp_path / "store.db")  # adds the columns the old file lacks
    found += problems(after, replay_sqlite(tmp_path / "store.db", after))
    _assert_none(found, f"level {level:04d} break after the file moved to {NEWEST:04d}")
