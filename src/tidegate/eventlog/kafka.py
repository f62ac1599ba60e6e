"""KafkaEventLog: the production log on a Kafka-protocol broker (Apache Kafka, MSK, Redpanda).

URL form::

    kafka://HOST:PORT[,HOST:PORT...][/][?NAME=VALUE&...]

Query parameters are librdkafka configuration, handed to the clients as given
(https://github.com/confluentinc/librdkafka/blob/master/CONFIGURATION.md): TLS,
SASL, timeouts, `fetch.wait.max.ms`, `session.timeout.ms`... Consumer-only and
producer-only properties reach only the client they concern. Four are Tidegate's:

- `partitions` (12) and `replication_factor` (1; use 3 in production): for a
  topic that does not exist yet, created at first use;
- `topic_prefix` (empty): put before every topic name and consumer group id, so
  deployments (or test runs) can share a cluster;
- `msk_iam_region`: Amazon MSK IAM authentication (SASL/OAUTHBEARER with tokens
  signed by the optional `aws-msk-iam-sasl-signer-python` package).

Examples::

    kafka://localhost:9092
    kafka://b-1.example:9094,b-2.example:9094/?security.protocol=SSL&ssl.ca.location=/etc/ca.pem&replication_factor=3
    kafka://b-1.example:9096/?security.protocol=SASL_SSL&sasl.mechanism=SCRAM-SHA-512&sasl.username=tidegate&sasl.password=...
    kafka://b-1.example:9098,b-2.example:9098/?msk_iam_region=eu-west-1&replication_factor=3

Records are keyed by tenant id (murmur2, as Java clients do), so each tenant's
events stay in one partition, in order. `append` returns once every record is
acknowledged by all in-sync replicas (idempotent producer, `acks=all`), or raises
BackendUnavailable after `message.timeout.ms` (10 s here, alias `delivery.timeout.ms`)
when the brokers cannot take them. After a broker connection drops or an append
fails, the next append checks its topic again: a topic that is gone is created
again, and one with a new topic id (the brokers lost their state, as a broker on
memory storage does when it restarts) gets a new producer, since the brokers have
forgotten the old one's producer id.

Each `consume` iterator is one member of the consumer group (cooperative-sticky): its
offsets move only on `commit` (at-least-once), and it leaves the group when the
iterator is closed or dropped, or on `aclose`, so commit a batch before dropping its
iterator. A member starts fetching once the broker has let it join the group (Apache
Kafka holds a new group for `group.initial.rebalance.delay.ms`); from then on a new
record reaches it within one fetch round trip. Retention is Kafka's: `trim` is a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from functools import partial
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import msgspec
import structlog
from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from tidegate.errors import BackendUnavailable, ConfigError
from tidegate.eventlog.base import Batch, LogRecord, Record

log = structlog.get_logger(__name__)

ENV_VAR = "TIDEGATE_LOG_URL"
# Prefixes of librdkafka properties that only one kind of client accepts; any other
# property is given to every client.
_CONSUMER_ONLY = (
    "auto.commit.",
    "auto.offset.reset",
    "check.crcs",
    "coordinator.query.interval.ms",
    "enable.auto.",
    "enable.partition.eof",
    "fetch.",
    "group.",
    "heartbeat.interval.ms",
    "isolation.level",
    "max.poll.interval.ms",
    "partition.assignment.strategy",
    "queued.",
    "session.timeout.ms",
)
_PRODUCER_ONLY = (
    "acks",
    "batch.",
    "compression.",
    "delivery.timeout.ms",
    "enable.gapless.guarantee",
    "enable.idempotence",
    "linger.ms",
    "message.send.max.retries",
    "message.timeout.ms",
    "partitioner",
    "queue.buffering.",
    "request.required.acks",
    "request.timeout.ms",
    "retries",
    "sticky.partitioning.",
    "transactional.",
)
# librdkafka's alias of `message.timeout.ms`; a URL may use either name.
_DELIVERY_TIMEOUT_ALIAS = "delivery.timeout.ms"
_PRODUCER_DEFAULTS: dict[str, Any] = {
    "linger.ms": 2,
    "partitioner": "murmur2_random",
    # Ingest waits on this while the brokers are unreachable: fail the request (503,
    # the client retries) within seconds, not after librdkafka's five-minute default.
    "message.timeout.ms": 10_000,
}
# The append contract: durable on every in-sync replica, never duplicated by retries.
_PRODUCER_REQUIRED: dict[str, Any] = {"enable.idempotence": True, "acks": "all"}
_CONSUMER_DEFAULTS: dict[str, Any] = {
    # Brokers answer a fetch as soon as data arrives; some (Tansu) only when this
    # expires, so keep it short: it bounds the wake-up latency there.
    "fetch.wait.max.ms": 10,
}
_CONSUMER_REQUIRED: dict[str, Any] = {
    "enable.auto.commit": False,
    # A group that never committed starts at the oldest record kept.
    "auto.offset.reset": "earliest",
    "partition.assignment.strategy": "cooperative-sticky",
}
# A commit refused because the partitions moved to another member (their records are
# redelivered there, which at-least-once allows), or with nothing left to commit.
_LOST_OWNERSHIP = frozenset(
    {
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError._NO_OFFSET,
    }
)
# Client errors saying a broker connection dropped: the broker may come back without
# our topics (a new cluster behind the same address, memory storage), so check them.
_CONNECTION_LOST = frozenset({KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN})
# Topics provisioned by operators: the principal may not be allowed to create them.
_NOT_ALLOWED_TO_CREATE = frozenset(
    {KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED}
)
# Brokers that cannot say a topic's id (too old), will not (ACLs), or not yet (a topic
# just created, its metadata still spreading).
_NO_TOPIC_ID = frozenset(
    {
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.UNSUPPORTED_VERSION,
        KafkaError._UNSUPPORTED_FEATURE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
    }
)
_POLL_S = 0.1
_FETCH_BYTES = 1024 * 1024
_FETCH_STEP = 100
# How long a hole in a partition's offsets may stay unfilled before it is taken as real.
_HOLE_GRACE_S = 2.0
_ACK_MARGIN_S = 5.0
_FLUSH_TIMEOUT_S = 10.0


class KafkaSettings(msgspec.Struct, frozen=True):
    """What a `kafka://` URL says: client configuration and topic defaults."""

    common: dict[str, Any]
    producer: dict[str, Any]
    consumer: dict[str, Any]
    partitions: int = 12
    replication_factor: int = 1
    topic_prefix: str = ""

    @property
    def timeout_s(self) -> float:
        """How long an append may wait for the broker: also bounds topic creation."""
        return float(self.producer["message.timeout.ms"]) / 1000

    @classmethod
    def from_url(cls, url: str) -> KafkaSettings:
        parts = urlsplit(url)
        if parts.scheme != "kafka" or not parts.netloc:
            raise ConfigError(f"{ENV_VAR}: expected kafka://HOST:PORT[,HOST:PORT...]")
        if "@" in parts.netloc:
            raise ConfigError(f"{ENV_VAR}: put credentials in sasl.username / sasl.password")
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        partitions = _positive_int(params.pop("partitions", "12"), "partitions")
        replication = _positive_int(params.pop("replication_factor", "1"), "replication_factor")
        prefix = params.pop("topic_prefix", "")
        common: dict[str, Any] = {
            "bootstrap.servers": parts.netloc,
            "client.id": "tidegate",
            "error_cb": _log_error,
            "logger": logging.getLogger("tidegate.eventlog.librdkafka"),
        }
        if region := params.pop("msk_iam_region", ""):
            common |= _msk_iam(region)
        producer, consumer = dict(_PRODUCER_DEFAULTS), dict(_CONSUMER_DEFAULTS)
        for name, value in params.items():
            if name == _DELIVERY_TIMEOUT_ALIAS:
                name = "message.timeout.ms"  # one key, so `timeout_s` sees the value in use
            if name.startswith(_CONSUMER_ONLY):
                consumer[name] = value
            elif name.startswith(_PRODUCER_ONLY):
                producer[name] = value
            else:
                common[name] = value
        return cls(
            common=common,
            producer=common | producer | _PRODUCER_REQUIRED,
            consumer=common | consumer | _CONSUMER_REQUIRED,
            partitions=partitions,
            replication_factor=replication,
            topic_prefix=prefix,
        )


class KafkaEventLog:
    """The EventLog on Kafka: one idempotent producer, one consumer per `consume` call."""

    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings
        self._producer_generation = 0  # errors reported by a replaced producer are ignored
        # Created now: an idempotent producer needs a producer id from the broker (up
        # to ~0.5 s with librdkafka) before the first append can complete.
        try:
            self._producer = self._new_producer()
        except KafkaException as exc:
            raise ConfigError(f"{ENV_VAR}: {exc.args[0].str()}") from exc
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{ENV_VAR}: {exc}") from exc
        self._known_topics: set[str] = set()
        # Each topic's id when last checked: a new id means the brokers lost their state.
        self._topic_ids: dict[str, str] = {}
        # One check per topic at a time; concurrent appends share its outcome, so an
        # unreachable broker costs each of them one timeout, not one per waiter.
        self._topic_checks: dict[str, asyncio.Future[None]] = {}
        # Set from librdkafka's threads: a broker connection dropped; the producer failed.
        self._is_topic_check_due = False
        self._has_producer_failed = False
        self._producer_lock = threading.Lock()
        self._members: set[_Member] = set()
        self._is_closed = False
        self._stop_deliveries = threading.Event()
        self._deliveries = threading.Thread(
            target=self._serve_deliveries, name="kafka-deliveries", daemon=True
        )
        self._deliveries.start()

    @classmethod
    def from_url(cls, url: str) -> KafkaEventLog:
        return cls(KafkaSettings.from_url(url))

    async def append(self, topic: str, records: Sequence[Record]) -> None:
        if not records:
            return
        if self._is_closed:
            raise BackendUnavailable("event log: closed")
        await self._ensure_topic(topic)
        loop = asyncio.get_running_loop()
        name = self._settings.topic_prefix + topic
        acks: list[asyncio.Future[KafkaError | None]] = []
        try:
            for record in records:
                acked: asyncio.Future[KafkaError | None] = loop.create_future()
                self._producer.produce(
                    name, record.value, record.key.encode(), on_delivery=partial(_ack, acked)
                )
                acks.append(acked)
        except (KafkaException, BufferError) as exc:
            self._known_topics.discard(topic)
            raise BackendUnavailable(f"event log: cannot queue records for {topic!r}") from exc
        try:
            # Every record is settled within the message timeout; the margin only guards
            # against a report that never comes, so that no request waits forever.
            results = await asyncio.wait_for(
                asyncio.gather(*acks), self._settings.timeout_s + _ACK_MARGIN_S
            )
        except TimeoutError:
            self._known_topics.discard(topic)
            raise BackendUnavailable(
                f"event log: no acknowledgement for {topic!r} within"
                f" {self._settings.timeout_s + _ACK_MARGIN_S:g}s"
            ) from None
        failures = [error for error in results if error is not None]
        if failures:
            # The topic may be gone (a broker restarted empty): the next append checks it.
            self._known_topics.discard(topic)
            raise BackendUnavailable(
                f"event log: {len(failures)} of {len(records)} records not acknowledged"
                f" ({failures[0].str()})"
            ) from KafkaException(failures[0])

    async def consume(
        self, topic: str, group: str, *, max_records: int = 500
    ) -> AsyncIterator[Batch]:
        if self._is_closed:
            return
        await self._ensure_topic(topic)
        member = _Member(self._settings, topic, group, max_records)
        self._members.add(member)
        try:
            while (batch := await member.next_batch()) is not None:
                yield batch
        finally:
            self._members.discard(member)
            await member.aclose()

    async def commit(self, batch: Batch) -> None:
        """Commit through the members of this log consuming `batch.topic` for `batch.group`.

        Each commits the partitions it still owns; a batch whose partitions moved
        (rebalance) or whose iterator was already closed is redelivered instead.
        """
        offsets: dict[int, int] = {}
        for record in batch.records:
            offsets[record.partition] = max(offsets.get(record.partition, 0), record.offset + 1)
        if not offsets:
            return
        # Registered before the first await, so a member closing concurrently (its
        # iterator dropped) finishes these commits before it leaves the group.
        pending = [
            member.commit(offsets)
            for member in self._members
            if member.topic == batch.topic and member.group == batch.group
        ]
        if not pending:
            log.warning("eventlog.commit_skipped", topic=batch.topic, group=batch.group)
        await asyncio.gather(*pending)

    async def trim(self, topic: str) -> int:
        return 0

    async def aclose(self) -> None:
        if self._is_closed:
            return
        self._is_closed = True
        await asyncio.gather(*(member.aclose() for member in list(self._members)))
        unsent = await asyncio.to_thread(self._producer.flush, _FLUSH_TIMEOUT_S)
        if unsent:
            # Their appends fail with BackendUnavailable (close would wait for them forever).
            log.warning("eventlog.records_unsent", count=unsent)
            await asyncio.to_thread(self._producer.purge)
            await asyncio.to_thread(self._producer.flush, _POLL_S)
        self._stop_deliveries.set()
        await asyncio.to_thread(self._deliveries.join)
        await asyncio.to_thread(self._producer.close)

    def _new_producer(self) -> Producer:
        self._producer_generation += 1
        on_error = partial(self._on_producer_error, self._producer_generation)
        return Producer(self._settings.producer | {"error_cb": on_error})

    def _serve_deliveries(self) -> None:
        """Run delivery callbacks (they resolve `append`'s futures) as reports arrive,
        and replace the producer once it has failed fatally."""
        while not self._stop_deliveries.is_set():
            producer = self._producer
            try:
                producer.poll(_POLL_S)
            except KafkaException as exc:
                # confluent-kafka raises a fatal error from poll; this thread must go on
                # or every later append would wait for a report that never comes.
                self._has_producer_failed |= exc.args[0].fatal()
                log.warning("eventlog.producer_error", reason=exc.args[0].str())
            if self._has_producer_failed and not self._replace_producer(producer, "failed"):
                self._stop_deliveries.wait(1.0)

    def _replace_producer(self, old: Producer, reason: str) -> bool:
        """Go on with a new producer, failing the records `old` still holds.

        The idempotent producer's id lives on the brokers: brokers that lost their
        state (a restart with memory storage, a rebuilt cluster) answer "unknown
        producer id", and librdkafka then either fails fatally or retries until the
        message timeout, never recovering. The records `old` holds were not
        acknowledged: their appends fail (503) and their clients send them again.
        """
        with self._producer_lock:
            if self._producer is not old:
                return True  # replaced already
            try:
                self._producer = self._new_producer()
            except KafkaException as exc:
                log.warning("eventlog.producer_not_replaced", reason=exc.args[0].str())
                return False
            self._has_producer_failed = False
        log.warning("eventlog.producer_replaced", reason=reason)
        try:
            old.purge()
            old.flush(_POLL_S)  # serves the purged records' reports
        except KafkaException as exc:
            log.info("eventlog.producer_purge_failed", reason=exc.args[0].str())
        return True

    def _on_producer_error(self, generation: int, error: KafkaError) -> None:
        if error.fatal() and generation == self._producer_generation:  # not a replaced one
            self._has_producer_failed = True
        if error.code() in _CONNECTION_LOST:
            self._is_topic_check_due = True
        _log_error(error)

    async def _ensure_topic(self, topic: str) -> None:
        """Create `topic` unless known to exist; known topics are checked again after a
        broker connection drops or an append fails, so a broker that restarted without
        them (memory storage, a rebuilt cluster) gets them back within one append."""
        if self._is_topic_check_due:
            self._is_topic_check_due = False
            self._known_topics.clear()
        if topic in self._known_topics:
            return
        check = self._topic_checks.get(topic)
        if check is None:
            check = asyncio.ensure_future(self._check_topic(topic))
            self._topic_checks[topic] = check
            check.add_done_callback(partial(self._topic_checked, topic))
        await asyncio.shield(check)

    async def _check_topic(self, topic: str) -> None:
        topic_id = await asyncio.to_thread(
            self._provision_topic, self._settings.topic_prefix + topic
        )
        previous = self._topic_ids.get(topic)
        if topic_id is not None and previous is not None and topic_id != previous:
            # The topic was created again (by us or by another process): the brokers
            # lost their state, producer ids included.
            log.warning("eventlog.topic_recreated", topic=topic)
            if not await asyncio.to_thread(self._replace_producer, self._producer, "topic lost"):
                raise BackendUnavailable("event log: cannot create a producer")
        if topic_id is not None:
            self._topic_ids[topic] = topic_id
        self._known_topics.add(topic)

    def _topic_checked(self, topic: str, check: asyncio.Future[None]) -> None:
        del self._topic_checks[topic]
        if not check.cancelled():
            check.exception()  # retrieved: the appends waiting on it raise it themselves

    def _provision_topic(self, name: str) -> str | None:
        """Create topic `name` unless it exists; its topic id, if the broker tells it."""
        new = NewTopic(
            name,
            num_partitions=self._settings.partitions,
            replication_factor=self._settings.replication_factor,
        )
        timeout_s = self._settings.timeout_s
        admin = AdminClient(self._settings.common)
        try:
            admin.create_topics([new], request_timeout=timeout_s)[name].result()
        except KafkaException as exc:
            code = exc.args[0].code()
            if code in _NOT_ALLOWED_TO_CREATE:
                log.info("eventlog.topic_not_created", topic=name, reason=exc.args[0].str())
            elif code != KafkaError.TOPIC_ALREADY_EXISTS:
                raise BackendUnavailable(f"event log: cannot create topic {name!r}") from exc
        try:
            found = admin.describe_topics(TopicCollection([name]), request_timeout=timeout_s)
            return str(found[name].result().topic_id)
        except KafkaException as exc:
            if exc.args[0].code() in _NO_TOPIC_ID:
                return None  # nothing to compare this time
            raise BackendUnavailable(f"event log: cannot describe topic {name!r}") from exc


class _Commit(msgspec.Struct, frozen=True):
    offsets: dict[int, int]
    done: asyncio.Future[None]


class _HoleGuard:
    """Holds back records fetched past a hole in their partition's offsets.

    Tidegate's topics have neither transactions nor compaction, and its producers are
    idempotent, so a partition's offsets are contiguous: a fetch that returns offset
    7733 right after 7671 came from a broker that made a produce visible before an
    earlier one was stored. Tansu's memory storage does this when two producers write
    one partition; the hole fills a moment later. Passing it would lose those records
    for this group (the commit moves past them), so the member seeks back to the hole
    and fetches again. A hole still there after `_HOLE_GRACE_S` is taken as real
    (records removed by compaction or retention) and passed with a warning.
    """

    def __init__(self, grace_s: float = _HOLE_GRACE_S) -> None:
        self._grace_s = grace_s
        self._next: dict[int, int] = {}  # partition -> the offset that should come next
        self._holes: dict[int, tuple[int, float]] = {}  # partition -> (hole, first seen)

    def forget(self, partitions: Sequence[int]) -> None:
        """The partitions moved (rebalance): their next fetch starts a new sequence."""
        for partition in partitions:
            self._next.pop(partition, None)
            self._holes.pop(partition, None)

    def restart(self, partition: int, offset: int) -> None:
        """`offset` was yielded whatever came before it: the sequence goes on from it."""
        self._holes.pop(partition, None)
        self._next[partition] = offset + 1

    def hole_before(self, partition: int, offset: int, now: float) -> int | None:
        """None when the record may be yielded; else the offset to fetch again from."""
        expected = self._next.get(partition)
        if expected is not None and offset > expected:
            hole = self._holes.get(partition)
            if hole is None or hole[0] != expected:
                log.info("eventlog.offset_hole", partition=partition, start=expected, end=offset)
                self._holes[partition] = (expected, now)
                return expected
            if now - hole[1] < self._grace_s:
                return expected
            log.warning(
                "eventlog.offset_hole_passed", partition=partition, start=expected, end=offset
            )
        self.restart(partition, offset)
        return None


_WANT = "want"  # the iterator waits for a batch
_STOP = "stop"


class _Member:
    """One consumer group member, driven by its own thread.

    The thread owns the librdkafka consumer: it fetches a batch when the iterator
    asks for one, and runs commits and the final leave in the order they were
    requested (a commit requested before the iterator closes is done before the
    member leaves the group). Batches yielded but not committed are redelivered
    after a restart or a rebalance.
    """

    def __init__(self, settings: KafkaSettings, topic: str, group: str, max_records: int) -> None:
        self.topic = topic
        self.group = group
        self._name = settings.topic_prefix + topic
        self._config = settings.consumer | {"group.id": settings.topic_prefix + group}
        self._max_records = max(1, max_records)
        self._loop = asyncio.get_running_loop()
        self._inbox: queue.SimpleQueue[_Commit | str] = queue.SimpleQueue()
        self._batches: asyncio.Queue[Batch | BackendUnavailable | None] = asyncio.Queue()
        self._done: asyncio.Future[None] = self._loop.create_future()
        self._thread: threading.Thread | None = None
        self._is_stopping = False
        self._has_ended = False
        self._holes = _HoleGuard()

    async def next_batch(self) -> Batch | None:
        if self._has_ended:
            return None
        if self._thread is None:
            if self._is_stopping:
                return None
            self._thread = threading.Thread(
                target=self._run, name=f"kafka-consumer:{self._config['group.id']}", daemon=True
            )
            self._thread.start()
        self._inbox.put(_WANT)
        item = await self._batches.get()
        if isinstance(item, Batch):
            return item
        self._has_ended = True
        if item is not None:
            raise item
        return None

    def commit(self, offsets: dict[int, int]) -> asyncio.Future[None]:
        done: asyncio.Future[None] = self._loop.create_future()
        if self._thread is None:  # nothing was yielded, so nothing to commit
            done.set_result(None)
        else:
            self._inbox.put(_Commit(offsets, done))
        return done

    async def aclose(self) -> None:
        """Leave the group once the commits already requested are done; ends `next_batch`."""
        if not self._is_stopping:
            self._is_stopping = True
            self._inbox.put(_STOP)
        if self._thread is not None:
            await asyncio.shield(self._done)

    def _run(self) -> None:
        try:
            consumer = Consumer(self._config)
        except KafkaException as exc:
            self._finish(_unavailable(f"cannot create a consumer for {self.group!r}", exc))
            return
        failure: BackendUnavailable | None = None
        try:
            consumer.subscribe([self._name], on_revoke=self._on_moved, on_lost=self._on_moved)
            self._serve(consumer)
        except KafkaException as exc:
            failure = _unavailable(f"consumer failed in group {self.group!r}", exc)
        finally:
            try:
                consumer.close()  # leaves the group: its partitions move on at once
            except (KafkaException, RuntimeError) as exc:
                log.warning("eventlog.leave_failed", group=self.group, reason=str(exc))
            self._finish(failure)

    def _serve(self, consumer: Consumer) -> None:
        is_wanted = False
        while True:
            try:
                # Idle until asked; while a batch is wanted, fetching runs between commands.
                command = self._inbox.get_nowait() if is_wanted else self._inbox.get()
            except queue.Empty:
                command = None
            if command == _STOP:
                return
            if command == _WANT:
                is_wanted = True
            elif isinstance(command, _Commit):
                self._commit(consumer, command)
            if is_wanted and (batch := self._fetch(consumer)) is not None:
                self._call(self._batches.put_nowait, batch)
                is_wanted = False

    def _on_moved(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._holes.forget([tp.partition for tp in partitions])

    def _commit(self, consumer: Consumer, command: _Commit) -> None:
        owned = {tp.partition for tp in consumer.assignment()}
        offsets = [
            TopicPartition(self._name, partition, offset)
            for partition, offset in command.offsets.items()
            if partition in owned  # the others moved: their new owner gets them again
        ]
        result: BackendUnavailable | None = None
        if offsets:
            try:
                consumer.commit(offsets=offsets, asynchronous=False)
            except KafkaException as exc:
                if exc.args[0].code() in _LOST_OWNERSHIP:
                    log.info("eventlog.commit_lost", group=self.group, reason=exc.args[0].str())
                else:
                    result = _unavailable(f"commit failed in group {self.group!r}", exc)
        self._call(_settle, command.done, result)

    def _fetch(self, consumer: Consumer) -> Batch | None:
        # consume(n, timeout) waits for n messages or the whole timeout; poll returns
        # the first message as soon as it arrives, then consume(n, 0) takes the rest.
        first = consumer.poll(_POLL_S)
        if first is None:
            return None
        messages = [first]
        # Up to max_records, and about _FETCH_BYTES: a record holds up to a request's
        # events (256 KB), so 500 of them could be over 100 MB: a router holding that much
        # at once took 45 MiB more peak RSS at 8 MB a batch.
        size = largest = len(first.value() or b"")
        while len(messages) < self._max_records and size < _FETCH_BYTES:
            # as many as fit in what is left, judged by the largest record seen
            step = max(1, min(_FETCH_STEP, (_FETCH_BYTES - size) // max(largest, 1)))
            more = consumer.consume(min(step, self._max_records - len(messages)), 0)
            if not more:
                break
            messages += more
            for message in more:
                length = len(message.value() or b"")
                size += length
                largest = max(largest, length)
        records = []
        held: set[int] = set()  # partitions fetched again from a hole
        now = time.monotonic()
        for message in messages:
            error = message.error()
            if error is not None:
                if error.fatal():
                    raise KafkaException(error)
                log.warning("eventlog.consume_error", group=self.group, reason=error.str())
                continue
            record = _record(message)
            if record.partition in held:
                continue
            hole = self._holes.hole_before(record.partition, record.offset, now)
            if hole is not None:
                if self._seek(consumer, record.partition, hole):
                    held.add(record.partition)
                    continue
                self._holes.restart(record.partition, record.offset)  # yielded as it is
            records.append(record)
        if not records:
            return None
        return Batch(topic=self.topic, group=self.group, records=tuple(records))

    def _seek(self, consumer: Consumer, partition: int, offset: int) -> bool:
        try:
            consumer.seek(TopicPartition(self._name, partition, offset))
        except KafkaException as exc:  # the partition just moved: its new owner reads it
            log.info("eventlog.seek_failed", partition=partition, reason=exc.args[0].str())
            return False
        return True

    def _finish(self, failure: BackendUnavailable | None) -> None:
        """End the iterator; commits requested too late are not done (redelivered)."""
        self._call(self._batches.put_nowait, failure)
        while True:
            try:
                command = self._inbox.get_nowait()
            except queue.Empty:
                break
            if isinstance(command, _Commit):
                self._call(_settle, command.done, None)
        self._call(_settle, self._done, None)

    def _call(self, fn: Callable[..., object], *args: object) -> None:
        _call_soon(self._loop, fn, *args)


def _record(message: Message) -> LogRecord:
    return LogRecord(
        partition=message.partition() or 0,
        offset=message.offset() or 0,
        key=(message.key() or b"").decode("utf-8", "replace"),
        value=message.value() or b"",
    )


def _ack(acked: asyncio.Future[KafkaError | None], error: KafkaError | None, _msg: object) -> None:
    """Delivery callback, on the delivery thread: settle the append's future on its loop."""
    _call_soon(acked.get_loop(), _resolve, acked, error)


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[..., object], *args: object) -> None:
    """Run `fn` on `loop` from another thread, unless the loop is closed (nobody waits)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn, *args)


def _resolve(future: asyncio.Future[Any], value: object) -> None:
    if not future.done():
        future.set_result(value)


def _settle(future: asyncio.Future[None], failure: BackendUnavailable | None) -> None:
    if future.done():
        return
    if failure is None:
        future.set_result(None)
    else:
        future.set_exception(failure)


def _unavailable(what: str, exc: KafkaException) -> BackendUnavailable:
    error = BackendUnavailable(f"event log: {what}")
    error.__cause__ = exc
    return error


def _log_error(error: KafkaError) -> None:
    """librdkafka retries on its own; say so only when no broker at all is reachable."""
    is_serious = error.fatal() or error.code() == KafkaError._ALL_BROKERS_DOWN
    (log.warning if is_serious else log.debug)(
        "eventlog.kafka_error", code=error.name(), reason=error.str()
    )


def _positive_int(value: str, name: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"{ENV_VAR}: {name} must be a positive integer, got {value!r}")
    return int(value)


def _msk_iam(region: str) -> dict[str, Any]:
    """SASL/OAUTHBEARER with MSK IAM tokens, refreshed by librdkafka through `oauth_cb`."""
    try:
        signer = importlib.import_module("aws_msk_iam_sasl_signer")
    except ImportError as exc:
        raise ConfigError(
            f"{ENV_VAR}: msk_iam_region needs the aws-msk-iam-sasl-signer-python package"
        ) from exc

    def token(_config: str) -> tuple[str, float]:
        value, expiry_ms = signer.MSKAuthTokenProvider.generate_auth_token(region)
        return value, expiry_ms / 1000

    return {"security.protocol": "SASL_SSL", "sasl.mechanism": "OAUTHBEARER", "oauth_cb": token}
