"""Scale-out and outages on PostgreSQL + Kafka, with `tidegate serve` as real processes.

Several processes share one database, one topic namespace and one data dir (so one
master key file). Each test gets a database and a namespace of its own; the broker
restart test gets a broker of its own, since restarting Tansu empties it. What the
tests measure (recovery times, duplicates) is printed: run with `-s` to see it.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
import requests
from psycopg import sql

from tests.kafka_broker import KafkaBroker
from tests.pg import Databases
from tests.support import Receiver, TenantHandle, Tidegate, wait_until

# A client gives up on one request after this long; a down backend must answer sooner.
_CLIENT_TIMEOUT_S = 30.0
# ...and on one event, retried, after this long.
_GIVE_UP_S = 120.0
# The longest a request may wait on a down backend: the log's message timeout (10 s)
# or the store's pool timeout (10 s), plus slack for a loaded machine.
_MAX_OUTAGE_ANSWER_S = 16.0
# The database outage: longer than the store's pool timeout (10 s).
_PG_OUTAGE_S = 12.0


class Deployment:
    """Tidegate processes sharing one data dir, one database and one event log."""

    def __init__(self, data_dir: Path, store_url: str, log_url: str) -> None:
        self.data_dir = data_dir
        self.env = {"TIDEGATE_STORE_URL": store_url, "TIDEGATE_LOG_URL": log_url}
        self.processes: list[Tidegate] = []
        self._ended: set[int] = set()

    def process(self, roles: str) -> Tidegate:
        """A process (not started yet) with its own port and TIDEGATE_ROLES=`roles`."""
        tg = Tidegate(self.data_dir, extra_env={**self.env, "TIDEGATE_ROLES": roles})
        self.processes.append(tg)
        return tg

    def start(self, *processes: Tidegate) -> None:
        """Start `processes` side by side; returns once every one answers /readyz."""
        with ThreadPoolExecutor(len(processes)) as pool:
            list(pool.map(lambda tg: tg.start(), processes))

    def kill(self, tg: Tidegate) -> None:
        tg.kill()
        self._ended.add(id(tg))

    def stop(self) -> list[int]:
        """SIGTERM every process still running; their exit codes."""
        codes = []
        for tg in self.processes:
            if tg.proc is not None and id(tg) not in self._ended:
                self._ended.add(id(tg))
                try:
                    codes.append(tg.stop())
                except BaseException:
                    tg.kill()
                    raise
        return codes

    def tenants(self, via: Tidegate, count: int) -> list[TenantHandle]:
        """`count` tenants made with the CLI, side by side (each takes three CLI runs)."""
        with ThreadPoolExecutor(count) as pool:
            return list(pool.map(lambda _: via.tenant(), range(count)))


@pytest.fixture
def database(postgres: Databases) -> Iterator[str]:
    url = postgres.create()
    yield url
    postgres.drop(url)


@pytest.fixture
def deployment(fresh_dir: Path, database: str, kafka_broker: KafkaBroker) -> Iterator[Deployment]:
    deployment = Deployment(fresh_dir, database, kafka_broker.log_url())
    yield deployment
    deployment.stop()


@dataclass(frozen=True)
class Answer:
    what: str  # the messageId of a track call, or the kind of request
    sent_at: float
    answered_at: float
    status: int | None  # None: no HTTP answer (connection refused, client timeout)
    retry_after: str | None

    @property
    def duration_s(self) -> float:
        return self.answered_at - self.sent_at


@dataclass
class Client:
    """Sends Segment track calls and records every answer; retries as the SDKs do."""

    answers: list[Answer] = field(default_factory=list)
    acked: dict[str, Answer] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._local = threading.local()

    def track(self, base: str, write_key: str, message_id: str) -> Answer:
        session = getattr(self._local, "session", None) or requests.Session()
        self._local.session = session
        body = {"userId": "u", "event": "Scale Out", "messageId": message_id}
        answer = timed(
            message_id,
            lambda: session.post(
                base + "/v1/track", json=body, auth=(write_key, ""), timeout=_CLIENT_TIMEOUT_S
            ),
        )
        with self._lock:
            self.answers.append(answer)
            if answer.status == 200:
                self.acked[message_id] = answer
        return answer

    def send(
        self, base: str, write_key: str, message_id: str, *, until: Callable[[], bool] | None = None
    ) -> bool:
        """Send until acknowledged (True), or until `until()` says stop (False)."""
        deadline = time.monotonic() + _GIVE_UP_S
        while time.monotonic() < deadline and not (until and until()):
            answer = self.track(base, write_key, message_id)
            if answer.status == 200:
                return True
            # Back off as a client does: Retry-After (seconds), capped so tests stay short.
            time.sleep(min(float(answer.retry_after or 0.05), 0.5))
        return False

    def acked_ids(self) -> set[str]:
        with self._lock:
            return set(self.acked)

    def acked_answers(self) -> list[Answer]:
        with self._lock:
            return list(self.acked.values())


def deliveries(receiver: Receiver, path: str) -> dict[str, list[str]]:
    """messageId -> the webhook-id of every delivery of it, in arrival order."""
    seen: dict[str, list[str]] = {}
    for r in receiver.at(path):
        seen.setdefault(r.json()["messageId"], []).append(r.headers["webhook-id"])
    return seen


def assert_duplicates_share_webhook_id(seen: dict[str, list[str]]) -> int:
    """Redeliveries are allowed (at-least-once) but must carry the same webhook-id;
    returns how many there were."""
    mixed = {m: ids for m, ids in seen.items() if len(set(ids)) > 1}
    assert not mixed, f"one event delivered under several webhook-ids: {list(mixed.items())[:3]}"
    return sum(len(ids) - 1 for ids in seen.values())


def attempts(tg: Tidegate, *, from_byte: int = 0) -> list[dict[str, Any]]:
    """The `delivery.attempted` log lines of a process (JSON logs)."""
    with tg.log_path.open("rb") as log:
        log.seek(from_byte)
        lines = log.read().decode(errors="replace").splitlines()
    return [
        json.loads(line)
        for line in lines
        if '"delivery.attempted"' in line and line.startswith("{") and line.endswith("}")
    ]


def get(base: str, api_key: str, path: str, **params: Any) -> requests.Response:
    return requests.get(
        base + path,
        params=params,
        headers={"authorization": f"Bearer {api_key}"},
        timeout=_CLIENT_TIMEOUT_S,
    )


def timed(what: str, call: Callable[[], requests.Response]) -> Answer:
    """Make one request; what came back, and when."""
    sent_at = time.monotonic()
    try:
        r = call()
    except requests.RequestException:
        return Answer(what, sent_at, time.monotonic(), None, None)
    return Answer(what, sent_at, time.monotonic(), r.status_code, r.headers.get("retry-after"))


def measured(test: str, **values: object) -> None:
    print(f"\nmeasured[{test}]: " + ", ".join(f"{k}={v}" for k, v in values.items()))


@pytest.mark.timeout(180)
def test_killed_worker_leaves_its_partitions_and_leases_to_the_other(
    deployment: Deployment, receiver: Receiver
) -> None:
    """SIGKILL one of two workers mid-stream: every acknowledged event is still delivered."""
    # Given one api process and two worker processes on one database and log, both
    # busy: records are keyed by tenant id, so each worker needs a tenant on its partitions
    api = deployment.process("api")
    workers = [deployment.process("worker"), deployment.process("worker")]
    path = f"/scale-{uuid.uuid4().hex}"
    tenants: list[TenantHandle] = []

    def add_tenants(count: int) -> None:
        for tenant in deployment.tenants(api, count):
            tenant.destination(receiver.on(path, 200))
            tenants.append(tenant)

    add_tenants(4)
    deployment.start(api, *workers)
    client = Client()
    warm_up = itertools.count()

    def both_workers_busy() -> bool:
        for tenant in tenants:
            assert client.send(api.base, tenant.write_key, f"warm-up-{next(warm_up)}")
        return all(attempts(w) for w in workers)

    for _ in range(4):  # the tenants may all hash to one worker's partitions: add one
        try:
            wait_until(both_workers_busy, timeout=10, interval=0.2)
            break
        except AssertionError:
            add_tenants(1)
    else:
        pytest.fail("one worker got no partition with a tenant on it")
    total = 2000
    warm_acked = len(client.acked)
    kill: dict[str, Any] = {}

    def kill_the_busier_worker() -> None:
        wait_until(lambda: len(client.acked) >= warm_acked + total // 3, timeout=120, interval=0.01)
        counts = [len(attempts(w)) for w in workers]
        victim = workers[counts.index(max(counts))]
        survivor = workers[1 - workers.index(victim)]
        kill.update(
            victim=victim,
            survivor=survivor,
            attempts_before=counts,
            survivor_log_at=survivor.log_path.stat().st_size,
            acked_before=len(client.acked) - warm_acked,
        )
        deployment.kill(victim)
        kill["at"] = time.monotonic()

    # When ~2,000 events are sent and the busier worker is SIGKILLed a third of the way in
    killer = threading.Thread(target=kill_the_busier_worker)
    killer.start()
    with ThreadPoolExecutor(8) as pool:
        sent = list(
            pool.map(
                lambda i: client.send(api.base, tenants[i % len(tenants)].write_key, f"scale-{i}"),
                range(total),
            )
        )
    killer.join()
    assert "at" in kill, "the worker was not killed"
    assert all(sent), "the api process stopped acknowledging events"

    # Then every acknowledged event is delivered: the survivor takes over the dead
    # worker's partitions at once and its leased deliveries when the lease lapses
    acked = client.acked_ids()
    assert len(acked) == warm_acked + total
    wait_until(lambda: acked <= set(deliveries(receiver, path)), timeout=100, interval=0.2)
    all_delivered_s = time.monotonic() - kill["at"]
    seen = deliveries(receiver, path)
    duplicates = assert_duplicates_share_webhook_id(seen)
    # The survivor delivered events of tenants the dead worker had served: its partitions moved.
    victim_tenants = {a["tenant_id"] for a in attempts(kill["victim"])}
    taken_over = {
        a["tenant_id"]
        for a in attempts(kill["survivor"], from_byte=kill["survivor_log_at"])
        if a["tenant_id"] in victim_tenants
    }
    assert taken_over, "the surviving worker delivered nothing for the dead worker's tenants"
    arrivals = [r.at for r in receiver.at(path)]
    measured(
        "kill-worker",
        acked_before_kill=kill["acked_before"],
        attempts_per_worker_before_kill=kill["attempts_before"],
        tenants=len(tenants),
        s_from_kill_to_all_delivered=round(all_delivered_s, 1),
        deliveries_after_kill_plus_30s=sum(1 for at in arrivals if at > kill["at"] + 30),
        duplicates=duplicates,
        deliveries=len(arrivals),
    )
    assert deployment.stop() == [0, 0]


def test_two_api_processes_serve_the_same_tenants(
    deployment: Deployment, receiver: Receiver
) -> None:
    """Events sent to either of two api processes are delivered and readable through both."""
    # Given two api processes on different ports and one worker
    api1, api2, worker = (
        deployment.process("api"),
        deployment.process("api"),
        deployment.process("worker"),
    )
    tenant = api1.tenant()
    path = f"/two-apis-{uuid.uuid4().hex}"
    tenant.destination(receiver.on(path, 200))
    deployment.start(api1, api2, worker)
    assert api1.port != api2.port

    # When events go to both, alternately
    client = Client()
    via = {"api1": api1.base, "api2": api2.base}
    with ThreadPoolExecutor(8) as pool:
        sent = list(
            pool.map(
                lambda i: client.send(
                    via[f"api{i % 2 + 1}"], tenant.write_key, f"api{i % 2 + 1}-{i}"
                ),
                range(300),
            )
        )
    assert all(sent)

    # Then all are delivered, once each
    acked = client.acked_ids()
    wait_until(lambda: acked <= set(deliveries(receiver, path)), timeout=30, interval=0.1)
    duplicates = assert_duplicates_share_webhook_id(deliveries(receiver, path))

    # And a read through either port sees the events sent through both
    def listed(base: str) -> dict[str, str]:
        r = get(base, tenant.api_key, "/v1/events", limit=500)
        assert r.status_code == 200, r.text
        return {e["message_id"]: e["id"] for e in r.json()["data"]}

    wait_until(lambda: set(listed(api1.base)) == acked == set(listed(api2.base)), timeout=15)
    for reader, message_id in (("api1", "api2-1"), ("api2", "api1-0")):  # sent via the other
        r = get(via[reader], tenant.api_key, f"/v1/events/{listed(via[reader])[message_id]}")
        assert r.status_code == 200, r.text
        assert r.json()["payload"]["messageId"] == message_id
    measured("two-apis", events=len(acked), duplicates=duplicates)
    assert deployment.stop() == [0, 0, 0]


@pytest.mark.timeout(180)
def test_broker_restart_answers_503_then_recovers(
    tmp_path: Path, fresh_dir: Path, database: str, receiver: Receiver
) -> None:
    """While the broker is down ingest answers 503 + Retry-After, never 2xx; then it recovers.

    Tansu keeps its data in memory: the restarted broker has no topics, offsets or
    groups, so what was acknowledged before the restart but not yet routed is gone
    with it. The checks are what a restart of that kind allows: no 2xx while down,
    a bounded 503 instead, recovery without help, and every event acknowledged after
    the restart delivered.
    """
    (tmp_path / "kafka").mkdir()
    broker = KafkaBroker.start(tmp_path / "kafka")
    deployment = Deployment(fresh_dir, database, broker.log_url())
    try:
        # Given an api process and a worker process on a broker of their own
        api, worker = deployment.process("api"), deployment.process("worker")
        tenant = api.tenant()
        path = f"/broker-restart-{uuid.uuid4().hex}"
        tenant.destination(receiver.on(path, 200))
        deployment.start(api, worker)
        client = Client()
        stop_sending = threading.Event()
        numbers = itertools.count()

        def keep_sending() -> None:
            while not stop_sending.is_set():
                message_id = f"restart-{next(numbers)}"
                client.send(api.base, tenant.write_key, message_id, until=stop_sending.is_set)

        senders = [threading.Thread(target=keep_sending) for _ in range(4)]
        for sender in senders:
            sender.start()
        try:
            wait_until(lambda: len(deliveries(receiver, path)) >= 50, timeout=30)

            # When the broker goes down while the client keeps sending
            broker.stop()
            down_at = time.monotonic()
            # The senders wait on requests made before the broker went: more clients
            # arrive now, so that requests made while it is down are answered soon.
            with ThreadPoolExecutor(4) as pool:
                for i in range(4):
                    pool.submit(client.track, api.base, tenant.write_key, f"while-down-{i}")
            assert sum(1 for a in client.answers if a.sent_at > down_at) >= 4
            restart_at = time.monotonic()
            broker.restart()
            up_at = time.monotonic()

            # Then it recovers by itself: acknowledged again, and delivered
            first_ack = wait_until(
                lambda: min(
                    (
                        a.answered_at
                        for a in list(client.answers)
                        if a.sent_at > up_at and a.status == 200
                    ),
                    default=None,
                ),
                timeout=30,
                interval=0.05,
            )
            assert first_ack is not None
            wait_until(
                lambda: sum(1 for a in client.acked_answers() if a.sent_at > up_at) >= 100,
                timeout=30,
            )
        finally:
            stop_sending.set()
            for sender in senders:
                sender.join()

        during = [a for a in client.answers if a.sent_at > down_at and a.answered_at < restart_at]
        assert during, "no request was answered while the broker was down"
        assert not [a for a in during if a.status is not None and 200 <= a.status < 300], (
            "acknowledged while the broker was down"
        )
        assert {a.status for a in during} == {503}, {a.status for a in during}
        assert all(a.retry_after for a in during), "a 503 without Retry-After"
        slowest_s = max(a.duration_s for a in client.answers if a.sent_at > down_at)
        assert slowest_s < _MAX_OUTAGE_ANSWER_S, f"a request waited {slowest_s:.1f}s"
        after_restart = {m for m, a in client.acked.items() if a.answered_at > restart_at}
        wait_until(
            lambda: after_restart <= set(deliveries(receiver, path)), timeout=30, interval=0.1
        )
        seen = deliveries(receiver, path)
        duplicates = assert_duplicates_share_webhook_id(seen)
        before_down = {m for m, a in client.acked.items() if a.answered_at < down_at}
        measured(
            "broker-restart",
            s_down=round(restart_at - down_at, 1),
            answers_while_down=len(during),
            slowest_answer_s=round(slowest_s, 1),
            s_from_broker_ready_to_first_ack=round(first_ack - up_at, 2),
            acked_after_restart=len(after_restart),
            acked_before_down_lost_with_broker_memory=len(before_down - set(seen)),
            duplicates=duplicates,
        )
        assert deployment.stop() == [0, 0]
    finally:
        deployment.stop()
        broker.stop()


@pytest.mark.timeout(180)
def test_postgres_outage_answers_503_then_recovers(
    deployment: Deployment, database: str, postgres: Databases, receiver: Receiver
) -> None:
    """While the database refuses connections, what needs it answers 503 + Retry-After;
    it recovers by itself once the database is back.

    The shared PostgreSQL server stays up: the outage is this test's database refusing
    connections (ALLOW_CONNECTIONS false) with Tidegate's sessions terminated.
    """
    # Given a process with a tenant, a write key in use and one never used yet
    tg = deployment.process("api,worker")
    tenant = tg.tenant()
    fresh_key = tg.cli("sources", "create", "--tenant", tenant.id, "--name", "fresh")["write_key"]
    path = f"/pg-outage-{uuid.uuid4().hex}"
    tenant.destination(receiver.on(path, 200))
    deployment.start(tg)
    client = Client()
    for i in range(20):
        assert client.send(tg.base, tenant.write_key, f"warm-{i}")
    wait_until(lambda: len(deliveries(receiver, path)) >= 20, timeout=30)
    assert get(tg.base, tenant.api_key, "/v1/events").status_code == 200
    name = urlsplit(database).path.lstrip("/")

    def allow_connections(allowed: bool) -> None:
        with psycopg.connect(postgres.admin_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
                    sql.Identifier(name), sql.Literal(allowed)
                )
            )
            if not allowed:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = %s AND pid <> pg_backend_pid()",
                    (name,),
                )

    numbers = itertools.count()
    calls: dict[str, Callable[[], Answer]] = {
        "readyz": lambda: timed(
            "readyz", lambda: requests.get(tg.base + "/readyz", timeout=_CLIENT_TIMEOUT_S)
        ),
        "read": lambda: timed("read", lambda: get(tg.base, tenant.api_key, "/v1/events")),
        "ingest-fresh-key": lambda: client.track(tg.base, fresh_key, f"fresh-{next(numbers)}"),
        "ingest-cached-key": lambda: client.track(
            tg.base, tenant.write_key, f"cached-{next(numbers)}"
        ),
    }
    needs_store = ("readyz", "read", "ingest-fresh-key")
    probes: dict[str, list[Answer]] = {kind: [] for kind in calls}
    stop_probing = threading.Event()

    def probe(kind: str) -> None:
        while not stop_probing.is_set():
            probes[kind].append(calls[kind]())
            stop_probing.wait(0.1)  # a polling client's pace

    # When the database goes away
    allow_connections(False)
    down_at = time.monotonic()
    threads = [threading.Thread(target=probe, args=(kind,)) for kind in calls]
    for thread in threads:
        thread.start()
    try:
        try:
            # Long enough for requests to wait out the pool (they first meet the
            # terminated sessions, then a pool that cannot connect), and twice each.
            wait_until(
                lambda: (
                    time.monotonic() - down_at >= _PG_OUTAGE_S
                    and all(
                        sum(1 for a in probes[kind] if a.sent_at > down_at) >= 2
                        for kind in needs_store
                    )
                ),
                timeout=60,
                interval=0.1,
            )
        finally:
            up_at = time.monotonic()
            allow_connections(True)

        # Then it recovers by itself
        def recovered_at(kind: str) -> float | None:
            return min(
                (a.answered_at for a in probes[kind] if a.sent_at > up_at and a.status == 200),
                default=None,
            )

        wait_until(lambda: all(recovered_at(kind) for kind in needs_store), timeout=60)
    finally:
        stop_probing.set()
        for thread in threads:
            thread.join()

    during = {
        kind: [a for a in answers if a.sent_at > down_at and a.answered_at < up_at]
        for kind, answers in probes.items()
    }
    for kind in needs_store:
        assert {a.status for a in during[kind]} == {503}, (kind, during[kind])
    for kind in ("read", "ingest-fresh-key"):  # problem responses; /readyz is plain JSON
        assert all(a.retry_after for a in during[kind]), f"{kind}: a 503 without Retry-After"
    slowest_s = max(
        a.duration_s for answers in probes.values() for a in answers if a.sent_at > down_at
    )
    assert slowest_s < _MAX_OUTAGE_ANSWER_S, f"a request waited {slowest_s:.1f}s"

    # And every acknowledged event, before, during or after the outage, is delivered
    acked = client.acked_ids()
    wait_until(lambda: acked <= set(deliveries(receiver, path)), timeout=30, interval=0.1)
    duplicates = assert_duplicates_share_webhook_id(deliveries(receiver, path))
    measured(
        "postgres-outage",
        s_down=round(up_at - down_at, 1),
        answers_while_down={kind: len(answers) for kind, answers in during.items()},
        cached_key_ingest_while_down=sorted({str(a.status) for a in during["ingest-cached-key"]}),
        slowest_answer_s=round(slowest_s, 1),
        s_to_recover={kind: round((recovered_at(kind) or 0) - up_at, 2) for kind in needs_store},
        timeline_s={
            kind: [(round(a.sent_at - down_at, 1), round(a.duration_s, 1)) for a in during[kind]]
            for kind in needs_store
        },
        acked=len(acked),
        duplicates=duplicates,
    )
    assert deployment.stop() == [0]
