"""The end-to-end tests in this folder run once per engine combination.

`tidegate` is overridden here: a `tidegate serve` on the embedded default (SQLite log
and store), and one on PostgreSQL + Kafka (a database of its own on the PostgreSQL
server, a topic namespace of its own on the Kafka broker). The tests do not know
which one they talk to.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.kafka_broker import KafkaBroker
from tests.pg import Databases
from tests.support import Tidegate

ENGINES = ["embedded", "postgres+kafka"]


@pytest.fixture(scope="session", params=ENGINES)
def tidegate(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Tidegate]:
    env: dict[str, str] = {}
    database: str | None = None
    if request.param == "postgres+kafka":
        postgres: Databases = request.getfixturevalue("postgres")
        broker: KafkaBroker = request.getfixturevalue("kafka_broker")
        database = postgres.create()
        env = {"TIDEGATE_STORE_URL": database, "TIDEGATE_LOG_URL": broker.log_url()}
    tg = Tidegate(tmp_path_factory.mktemp(request.param.replace("+", "-")) / "data", extra_env=env)
    tg.start()
    yield tg
    code = tg.stop()
    if database is not None:
        request.getfixturevalue("postgres").drop(database)
    assert code == 0, tg.logs()[-3000:]
