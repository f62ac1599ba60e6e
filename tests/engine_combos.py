"""The engines a `tidegate serve` under test runs on, and how to read back what they keep.

An `Engine` is a store and a log, each with the environment that selects it and a way to
read every byte it holds (`stored()`). Engine differences a test cares about are data
here, so a test is written once: it asks the engine, it never branches on its name.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import psycopg
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from psycopg import sql

from tests.kafka_broker import TEST_CLIENT_CONFIG, KafkaBroker
from tests.support import Tidegate

_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Stored:
    """Bytes an engine keeps, and where they came from (for assertion messages)."""

    where: str
    data: bytes


class Part(Protocol):
    """One engine (store or log): the settings that select it and the bytes it keeps."""

    @property
    def env(self) -> Mapping[str, str]: ...

    def stored(self) -> Iterator[Stored]:
        """Every byte this engine holds for the server under test, as it is at rest."""
        ...


class StorePart(Part, Protocol):
    @property
    def crash_recovery_s(self) -> float:
        """How long deliveries a killed worker had in flight wait before they are sent again.

        A sole worker (SQLite) takes them back as it starts; on a shared store their lease
        has to run out first (the 60 s floor of `lease_ms` in tidegate/pipeline/router.py).
        """
        ...


class LogPart(Part, Protocol):
    def high_water(self) -> int:
        """Grows with every append and never shrinks (housekeeping may trim records)."""
        ...


@dataclass(frozen=True)
class SqliteFiles:
    """An embedded SQLite database (the default): its file and the WAL and shm beside it."""

    path: Path
    env: Mapping[str, str] = field(default_factory=dict)

    def stored(self) -> Iterator[Stored]:
        for suffix in ("", "-wal", "-shm"):
            path = self.path.with_name(self.path.name + suffix)
            if path.exists():
                yield Stored(str(path), path.read_bytes())


@dataclass(frozen=True)
class SqliteStore(SqliteFiles):
    crash_recovery_s: float = 0.0


@dataclass(frozen=True)
class SqliteLog(SqliteFiles):
    def high_water(self) -> int:
        if not self.path.exists():
            return -1
        with sqlite3.connect(self.path) as conn:
            return int(conn.execute("SELECT COALESCE(MAX(pos), -1) FROM records").fetchone()[0])


@dataclass(frozen=True)
class PostgresDatabase:
    """A PostgreSQL store: a database of its own; `stored()` dumps every row of every table.

    Each row comes as its text form (bytea as hex) and each bytea column again as raw bytes.
    """

    url: str
    crash_recovery_s: float = 60.0

    @property
    def env(self) -> Mapping[str, str]:
        return {"TIDEGATE_STORE_URL": self.url}

    def stored(self) -> Iterator[Stored]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            tables = conn.execute(
                "SELECT schemaname, tablename FROM pg_tables"
                " WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
                " ORDER BY 1, 2"
            ).fetchall()
            assert tables, f"no tables in {self.url}"
            for schema, table in tables:
                name = sql.Identifier(schema, table)
                where = f"postgres {schema}.{table}"
                rows = conn.execute(sql.SQL("SELECT t::text FROM {} AS t").format(name))
                for (text,) in rows:
                    yield Stored(where, text.encode())
                columns = conn.execute(
                    "SELECT column_name FROM information_schema.columns"
                    " WHERE table_schema = %s AND table_name = %s AND data_type = 'bytea'",
                    (schema, table),
                ).fetchall()
                for (column,) in columns:
                    query = sql.SQL("SELECT {} FROM {}").format(sql.Identifier(column), name)
                    for (value,) in conn.execute(query):
                        if value is not None:
                            yield Stored(f"{where}.{column}", bytes(value))


@dataclass(frozen=True)
class KafkaNamespace:
    """A Kafka log: topics and groups under a prefix of their own on the shared broker.

    `stored()` reads every record of every topic in the namespace from the start: key,
    value and each header.
    """

    bootstrap: str
    prefix: str
    url: str

    @classmethod
    def on(cls, broker: KafkaBroker) -> KafkaNamespace:
        namespace = uuid.uuid4().hex
        return cls(broker.bootstrap, f"{namespace}.", broker.log_url(namespace))

    @property
    def env(self) -> Mapping[str, str]:
        return {"TIDEGATE_LOG_URL": self.url}

    def stored(self) -> Iterator[Stored]:
        ends = self._ends()
        if not ends:
            return
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"{self.prefix}tests-reader",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": TEST_CLIENT_CONFIG["fetch.wait.max.ms"],
                "log_level": 0,
            }
        )
        try:
            consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in ends])
            left = {tp: end for tp, end in ends.items() if end > 0}
            while left:
                message = consumer.poll(_TIMEOUT_S)
                assert message is not None, f"Kafka: records not read by {_TIMEOUT_S}s: {left}"
                if message.error():
                    raise KafkaException(message.error())
                at = (str(message.topic()), int(message.partition() or 0))
                offset = int(message.offset() or 0)
                where = f"kafka {at[0]}[{at[1]}]@{offset}"
                yield Stored(f"{where} key", _bytes(message.key()))
                yield Stored(f"{where} value", _bytes(message.value()))
                headers = message.headers() or []
                for name, value in headers.items() if isinstance(headers, dict) else headers:
                    yield Stored(f"{where} header {name}", _bytes(name) + b"=" + _bytes(value))
                if offset + 1 >= left.get(at, 0):
                    left.pop(at, None)
        finally:
            consumer.close()

    def high_water(self) -> int:
        return sum(self._ends().values())

    def _ends(self) -> dict[tuple[str, int], int]:
        """The end offset of each partition of each topic in the namespace."""
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        topics = admin.list_topics(timeout=_TIMEOUT_S).topics
        consumer = Consumer(
            {"bootstrap.servers": self.bootstrap, "group.id": "unused", "log_level": 0}
        )
        try:
            return {
                (name, p): consumer.get_watermark_offsets(
                    TopicPartition(name, p), timeout=_TIMEOUT_S
                )[1]
                for name, metadata in topics.items()
                if name.startswith(self.prefix)
                for p in metadata.partitions
            }
        finally:
            consumer.close()


def _bytes(value: str | bytes | None) -> bytes:
    return value.encode() if isinstance(value, str) else value or b""


@dataclass
class Engine:
    """A store and a log for `tidegate serve`, with a data dir of its own.

    `stored()` is every byte at rest: what the store and the log hold, and every other
    file in the data dir (server logs included).
    """

    name: str
    data_dir: Path
    store: StorePart
    log: LogPart
    servers: list[Tidegate] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {**self.store.env, **self.log.env}

    def tidegate(self, *, region: str = "eu", env: dict[str, str] | None = None) -> Tidegate:
        """A server on this engine (not started), with `env` added to its environment;
        killed at teardown if still running."""
        tg = Tidegate(self.data_dir, region=region, extra_env={**self.env, **(env or {})})
        self.servers.append(tg)
        return tg

    def stored(self) -> Iterator[Stored]:
        seen: set[str] = set()
        for part in (self.store, self.log):
            for item in part.stored():
                seen.add(item.where)
                yield item
        if self.data_dir.exists():
            for path in sorted(self.data_dir.rglob("*")):
                if path.is_file() and str(path) not in seen:
                    yield Stored(str(path), path.read_bytes())

    def stop_servers(self) -> None:
        """SIGKILL any server a failed test left running."""
        for tg in self.servers:
            if tg.proc is not None and tg.proc.poll() is None:
                tg.kill()
