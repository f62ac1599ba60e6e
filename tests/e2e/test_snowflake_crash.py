"""Snowflake loading survives crashes: `tidegate serve` is SIGKILLed several times while
a client sends events (retrying each until it is acknowledged, as SDKs do), some kills
landing while a batch is between PUT/COPY and MERGE. Every acknowledged event must end
up as exactly one row. A short steady phase then measures freshness."""

from __future__ import annotations

import contextlib
import json
import random
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests
import snowflake.connector

from tests.support import TenantHandle, Tidegate, wait_until
from tests.warehouse import DATABASE, SCHEMA, fake_warehouse, private_key_pem

CRASH_EVENTS, KILLS = 600, 5
STEADY_EVENTS, STEADY_RATE = 200, 50.0


@pytest.fixture
def warehouse() -> Iterator[dict[str, Any]]:
    with fake_warehouse() as kwargs:
        yield kwargs


@pytest.fixture
def key_pem() -> str:
    return private_key_pem()


def _query(warehouse: dict[str, Any], sql: str) -> list[tuple[Any, ...]]:
    try:
        with snowflake.connector.connect(**warehouse, database=DATABASE, schema=SCHEMA) as conn:
            cursor = conn.cursor()
            cursor.execute(f"USE SCHEMA {DATABASE}.{SCHEMA}")
            return list(cursor.execute(sql).fetchall())
    except snowflake.connector.ProgrammingError:
        return []  # the first batch creates the table


def _send_until_acked(t: TenantHandle, message_id: str, n: int) -> tuple[float, int]:
    """POST one event until the gateway answers 200; (time acknowledged, retries)."""
    body = {"userId": f"u{n % 7}", "event": "Crash Test", "messageId": message_id}
    body["properties"] = {"n": n}
    retries = 0
    while True:
        try:
            r = requests.post(t.tg.base + "/v1/track", json=body, auth=(t.write_key, ""), timeout=5)
            if r.status_code == 200:
                return time.time(), retries
        except requests.RequestException:
            pass
        retries += 1
        time.sleep(0.05)


def _aware(ts: datetime) -> float:
    return ts.timestamp()


def test_sigkills_mid_batch_lose_and_duplicate_no_event(
    tmp_path: Path, warehouse: dict[str, Any], key_pem: str
) -> None:
    rng = random.Random(int(time.time()))  # noqa: S311 - test timing only
    tg = Tidegate(
        tmp_path / "data",
        extra_env={
            "TIDEGATE_SNOWFLAKE_FLUSH_INTERVAL_S": "0.2",
            "TIDEGATE_SNOWFLAKE_BATCH_ROWS": "50",
            "TIDEGATE_SNOWFLAKE_TIMEOUT_S": "10",
        },
    ).start()
    try:
        # Given a snowflake destination pointed at the fake warehouse
        t = tg.tenant()
        table = f"CRASH_{time.monotonic_ns()}"
        settings = {
            "account": "acme-eu", "user": "TIDEGATE", "role": "LOADER",
            "warehouse": "LOADING", "database": DATABASE, "schema": SCHEMA,
            "table": table, "region": "eu", "private_key": key_pem,
            "host": warehouse["host"], "port": warehouse["port"], "protocol": "http",
        }  # fmt: skip
        created = requests.post(
            tg.base + "/v1/destinations",
            json={"kind": "snowflake", "retry_schedule": "0,1s*90", "snowflake": settings},
            headers={"authorization": f"Bearer {t.api_key}"},
            timeout=10,
        )
        assert created.status_code == 201, created.text

        # When a client sends 600 events, each retried until acknowledged...
        acked: dict[str, float] = {}
        retries = [0]
        failure: list[BaseException] = []

        def send() -> None:
            try:
                for n in range(CRASH_EVENTS):
                    mid = f"crash-{n}-{uuid.uuid4()}"
                    at, tries = _send_until_acked(t, mid, n)
                    acked[mid] = at
                    retries[0] += tries
                    time.sleep(0.008)  # ~100/s: batches keep flowing while kills land
            except BaseException as exc:  # noqa: BLE001 - surfaced below
                failure.append(exc)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()

        # ...and the server is SIGKILLed at random points, restarted on the same data dir
        thresholds = sorted(rng.sample(range(60, CRASH_EVENTS - 60), KILLS))
        kills: list[dict[str, Any]] = []
        for threshold in thresholds:
            wait_until(lambda th=threshold: len(acked) >= th or failure, timeout=60)
            time.sleep(rng.uniform(0.0, 0.25))
            rows_before = _query(warehouse, f"SELECT COUNT(*) FROM {table}")  # noqa: S608
            tg.kill()
            kills.append({"after_acked": len(acked), "rows_seen": rows_before})
            tg.start()
        sender.join(timeout=60)
        assert not sender.is_alive() and not failure, failure
        assert len(acked) == CRASH_EVENTS

        # Then, once loading catches up, every acknowledged event has exactly one row
        def loaded() -> int:
            got = _query(warehouse, f"SELECT COUNT(DISTINCT message_id) FROM {table}")  # noqa: S608
            return got[0][0] if got and got[0][0] >= len(acked) else 0

        with contextlib.suppress(AssertionError):  # a shortfall is reported in detail below
            wait_until(loaded, timeout=45, interval=0.25)
        dupes = _query(
            warehouse,
            f"SELECT message_id, COUNT(*) FROM {table} GROUP BY 1 HAVING COUNT(*) > 1",  # noqa: S608
        )
        ids = [r[0] for r in _query(warehouse, f"SELECT message_id FROM {table}")]  # noqa: S608
        logs = tg.logs()
        recovered = [
            json.loads(line).get("deliveries")
            for line in logs.splitlines()
            if "worker.recovered_leases" in line and line.startswith("{")
        ]
        print(
            f"\n[crash] kills={len(kills)} at={kills} client_retries={retries[0]}"
            f" rows={len(ids)} distinct={len(set(ids))} duplicates={len(dupes)}"
            f" failed_batches={logs.count('snowflake.batch_failed')}"
            f" loaded_batches={logs.count('snowflake.batch_loaded')}"
            f" leases_recovered_per_restart={recovered}"
        )
        assert dupes == [], f"duplicated message ids: {dupes[:10]}"
        assert set(ids) == set(acked), (
            f"missing={len(set(acked) - set(ids))} extra={len(set(ids) - set(acked))}"
        )
        assert len(ids) == len(acked) == CRASH_EVENTS

        # When 200 more events arrive at ~50/s with no kills
        sent_at: dict[str, float] = {}
        seen_at: dict[str, float] = {}
        stop_polling = threading.Event()

        def poll() -> None:
            sql = f"SELECT message_id FROM {table} WHERE message_id LIKE 'steady-%'"  # noqa: S608
            while not stop_polling.is_set():
                found = _query(warehouse, sql)
                now = time.time()  # after the query: an upper bound on when it became visible
                for (mid,) in found:
                    seen_at.setdefault(mid, now)
                time.sleep(0.05)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        start = time.monotonic()
        for n in range(STEADY_EVENTS):
            delay = start + n / STEADY_RATE - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            mid = f"steady-{n}-{uuid.uuid4()}"
            sent_at[mid] = time.time()
            _send_until_acked(t, mid, n)
        try:
            wait_until(lambda: len(seen_at) >= STEADY_EVENTS, timeout=30, interval=0.1)
        finally:
            stop_polling.set()
            poller.join(timeout=10)

        # Then every one loads; freshness is reported, not asserted
        rows = _query(
            warehouse,
            f"SELECT message_id, received_at, loaded_at FROM {table}"  # noqa: S608
            " WHERE message_id LIKE 'steady-%'",
        )
        assert {r[0] for r in rows} == set(sent_at) and len(rows) == STEADY_EVENTS
        in_table = sorted(_aware(r[2]) - _aware(r[1]) for r in rows)
        visible = sorted(seen_at[m] - sent_at[m] for m in sent_at)

        def pct(xs: list[float], q: float) -> float:
            return statistics.quantiles(xs, n=100, method="inclusive")[q - 1] * 1000

        print(
            f"[freshness] loaded_at-received_at p50={pct(in_table, 50):.0f}ms"
            f" p99={pct(in_table, 99):.0f}ms max={in_table[-1] * 1000:.0f}ms;"
            f" send->visible p50={pct(visible, 50):.0f}ms p99={pct(visible, 99):.0f}ms"
            f" max={visible[-1] * 1000:.0f}ms"
        )
    finally:
        tg.stop()
