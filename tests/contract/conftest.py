"""Engine fixtures for the contract suites: every test runs unchanged on every engine.

A new engine is one more entry in ENGINES. PostgreSQL tests each get a new, empty
database on the server `tests/pg.py` finds or starts: the store's claims and lease
releases are global, so tests must not share one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.kafka_broker import KafkaBroker
from tests.pg import Databases
from tidegate.eventlog import EventLog, open_event_log
from tidegate.store import Store, open_store
from tidegate.store.sqlite import SqliteStore

LOG_ENGINES = ["sqlite", "kafka"]
# "sqlite-flushing": the embedded store writing its dedupe claims to the claims file after
# every routing call, where the default keeps 100,000 in memory and its journal first.
STORE_ENGINES = ["sqlite", "sqlite-flushing", "postgres"]


def log_url(engine: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if engine == "kafka":
        broker: KafkaBroker = request.getfixturevalue("kafka_broker")
        return broker.log_url()  # a namespace of its own: fresh topics and groups
    assert engine == "sqlite", engine
    return f"sqlite:///{tmp_path}/log.db"


def store_url(engine: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if engine == "postgres":
        url: str = request.getfixturevalue("postgres_url")
        return url
    assert engine == "sqlite", engine
    return f"sqlite:///{tmp_path}/store.db"


@pytest.fixture
def postgres_url(postgres: Databases) -> Iterator[str]:
    """A new, empty database of this run, dropped after the test."""
    url = postgres.create()
    yield url
    postgres.drop(url)


@pytest.fixture(params=LOG_ENGINES)
async def log_factory(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[object]:
    """Opens logs on one engine location, so a test can 'restart' by opening again."""
    opened: list[EventLog] = []
    url = log_url(request.param, request, tmp_path)

    def open_log() -> EventLog:
        log = open_event_log(url)
        opened.append(log)
        return log

    open_log.url = url  # type: ignore[attr-defined]  # for tests that append from other processes
    yield open_log
    for log in opened:
        await log.aclose()


@pytest.fixture(params=STORE_ENGINES)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s: Store
    if request.param == "sqlite-flushing":
        s = SqliteStore(tmp_path / "store.db", flush_claims_at=1)
    else:
        s = open_store(store_url(request.param, request, tmp_path))
    yield s
    await s.aclose()
