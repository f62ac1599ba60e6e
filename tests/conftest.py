"""Session fixtures: one shared `tidegate serve` and one webhook receiver.

Tests isolate themselves by creating their own tenants; tests that crash or stop
a server start their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kafka_broker import KafkaBroker
from tests.pg import Databases, find_or_start_postgres, stop_postgres
from tests.support import Receiver, Tidegate


@pytest.fixture(scope="session")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="session")
def tidegate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tidegate]:
    tg = Tidegate(tmp_path_factory.mktemp("shared") / "data").start()
    yield tg
    assert tg.stop() == 0, tg.logs()[-3000:]


@pytest.fixture
def fresh_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Databases]:
    """The PostgreSQL server (found or started once) and this run's databases on it."""
    tmp_dir = tmp_path_factory.mktemp("postgres")
    databases = Databases(find_or_start_postgres(tmp_dir))
    yield databases
    databases.drop_all()
    stop_postgres(tmp_dir)


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """The Kafka-protocol broker (Tansu), started once for the session."""
    try:
        broker = KafkaBroker.start(tmp_path_factory.mktemp("kafka"))
    except RuntimeError as exc:
        pytest.fail(f"cannot start the Kafka broker: {exc}", pytrace=False)
    yield broker
    broker.stop()
