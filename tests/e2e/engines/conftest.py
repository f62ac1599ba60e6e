"""The end-to-end tests in this folder run once per engine combination.

- embedded: SQLite store and SQLite log in the data dir (the default);
- postgres: a PostgreSQL database of its own for the store, the SQLite log;
- postgres+kafka: a PostgreSQL database and a topic namespace of its own on the Kafka broker.

`tidegate` is overridden here: one shared `tidegate serve` per combination, and
`shared_engine` is the engine it runs on. Tests that kill or restart a server ask for
`engine` instead: a fresh data dir, database and namespace per test, and
`engine.tidegate()` to build servers on it. The tests do not know which combination they
talk to: what differs is data on the `Engine` (tests/engines.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.engine_combos import (
    Engine,
    KafkaNamespace,
    LogPart,
    PostgresDatabase,
    SqliteLog,
    SqliteStore,
    StorePart,
)
from tests.kafka_broker import KafkaBroker
from tests.pg import Databases
from tests.support import Tidegate

# name -> (store, log)
ENGINES = {
    "embedded": ("sqlite", "sqlite"),
    "postgres": ("postgres", "sqlite"),
    "postgres+kafka": ("postgres", "kafka"),
}


@contextmanager
def _open_engine(request: pytest.FixtureRequest, name: str, data_dir: Path) -> Iterator[Engine]:
    """The engine `name` on fresh storage; its database is dropped afterwards.

    The PostgreSQL server and the Kafka broker are asked for only when the combination
    uses them; each fails the test loudly if it cannot be found or started.
    """
    store_kind, log_kind = ENGINES[name]
    databases: Databases | None = None
    database: str | None = None
    store: StorePart
    log: LogPart
    if store_kind == "postgres":
        databases = request.getfixturevalue("postgres")
        database = databases.create()
        store = PostgresDatabase(database)
    else:
        store = SqliteStore(data_dir / "store.db")
    if log_kind == "kafka":
        broker: KafkaBroker = request.getfixturevalue("kafka_broker")
        log = KafkaNamespace.on(broker)
    else:
        log = SqliteLog(data_dir / "log.db")
    engine = Engine(name, data_dir, store, log)
    try:
        yield engine
    finally:
        engine.stop_servers()
        if databases is not None and database is not None:
            databases.drop(database)


@pytest.fixture(scope="session", params=list(ENGINES))
def shared_engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    """The engine the shared `tidegate` runs on."""
    data_dir = tmp_path_factory.mktemp(request.param.replace("+", "-")) / "data"
    with _open_engine(request, request.param, data_dir) as engine:
        yield engine


@pytest.fixture(scope="session")
def tidegate(shared_engine: Engine) -> Iterator[Tidegate]:
    tg = shared_engine.tidegate().start()
    yield tg
    assert tg.stop() == 0, tg.logs()[-3000:]


@pytest.fixture(params=list(ENGINES))
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A fresh engine for this test alone: start, kill and restart servers on it."""
    with _open_engine(request, request.param, tmp_path / "data") as engine:
        yield engine
