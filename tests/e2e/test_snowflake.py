"""Snowflake destinations end to end: `tidegate serve`, the Segment SDK, the real
Snowflake connector, and fakesnow's server standing in for the warehouse."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import snowflake.connector
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fakesnow import server as fake_warehouse
from segment.analytics.client import Client as SegmentClient

from tests.support import TenantHandle, Tidegate, free_port, wait_until

# `fake_warehouse` is bound at import: starting a server imports the `fakesnow.server`
# submodule, which then shadows the `fakesnow.server()` function of the same name.
DATABASE, SCHEMA = "ANALYTICS", "RAW"


@pytest.fixture(scope="module")
def warehouse() -> Iterator[dict[str, Any]]:
    """fakesnow's HTTP server (one in-memory database for its lifetime), its database and
    schema created as a customer would before pointing Tidegate at them."""
    with fake_warehouse() as kwargs:
        with snowflake.connector.connect(**kwargs) as conn:
            conn.cursor().execute(f"CREATE DATABASE IF NOT EXISTS {DATABASE}")
            conn.cursor().execute(f"CREATE SCHEMA IF NOT EXISTS {DATABASE}.{SCHEMA}")
        yield kwargs


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path_factory.mktemp("keys") / "rsa_key.p8"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def _query(warehouse: dict[str, Any], sql: str) -> list[tuple[Any, ...]]:
    with snowflake.connector.connect(**warehouse, database=DATABASE, schema=SCHEMA) as conn:
        cursor = conn.cursor()
        cursor.execute(f"USE SCHEMA {DATABASE}.{SCHEMA}")
        return list(cursor.execute(sql).fetchall())


def _create(t: TenantHandle, body: dict[str, Any]) -> requests.Response:
    return requests.post(
        t.tg.base + "/v1/destinations",
        json=body,
        headers={"authorization": f"Bearer {t.api_key}"},
        timeout=10,
    )


def _settings(warehouse: dict[str, Any], table: str, key_file: Path) -> dict[str, Any]:
    return {
        "account": "acme-eu",
        "user": "TIDEGATE",
        "role": "LOADER",
        "warehouse": "LOADING",
        "database": DATABASE,
        "schema": SCHEMA,
        "table": table,
        "region": "eu",
        "private_key": key_file.read_text(),
        "host": warehouse["host"],
        "port": warehouse["port"],
        "protocol": "http",
    }


def test_events_land_once_per_event_and_a_replay_adds_no_row(
    tidegate: Tidegate, warehouse: dict[str, Any], key_file: Path
) -> None:
    # Given a snowflake destination made with the CLI, pointed at the fake warehouse
    t = tidegate.tenant()
    table = f"EVENTS_{time.monotonic_ns()}"
    dest = tidegate.cli(
        "destinations", "create", "--tenant", t.id, "--kind", "snowflake",
        "--snowflake-account", "acme-eu", "--snowflake-user", "TIDEGATE",
        "--snowflake-role", "LOADER", "--snowflake-warehouse", "LOADING",
        "--snowflake-database", DATABASE, "--snowflake-schema", SCHEMA,
        "--snowflake-table", table, "--snowflake-region", "eu",
        "--snowflake-private-key-file", str(key_file),
        "--snowflake-host", warehouse["host"], "--snowflake-port", str(warehouse["port"]),
        "--snowflake-protocol", "http",
    )  # fmt: skip
    assert dest["kind"] == "snowflake" and "secret" not in dest
    started = time.time()

    # When the Segment SDK sends three events
    errors: list[Exception] = []
    client = SegmentClient(
        t.write_key, host=tidegate.base, sync_mode=True, on_error=lambda e, b: errors.append(e)
    )
    client.identify("user-7", {"plan": "pro"})
    client.track("user-7", "Order Completed", {"total": 99.5})
    client.track("user-7", "Checkout Started", {"step": 1})
    client.flush()
    assert errors == []

    # Then each lands as one row, readable with JSON path syntax
    columns = (
        "event_id, type, user_id, payload:event::string, payload:properties.total::float,"
        " received_at, loaded_at"
    )

    def rows() -> list[tuple[Any, ...]]:
        try:
            return _query(warehouse, f"SELECT {columns} FROM {table}")  # noqa: S608
        except snowflake.connector.ProgrammingError:
            return []  # the first batch creates the table

    loaded = wait_until(lambda: len(rows()) >= 3 and rows(), timeout=30)
    assert len(loaded) == 3
    assert sorted(r[1] for r in loaded) == ["identify", "track", "track"]
    assert {r[3] for r in loaded} == {None, "Order Completed", "Checkout Started"}
    assert {r[2] for r in loaded} == {"user-7"}
    assert any(r[4] == 99.5 for r in loaded)
    assert all(r[5] is not None and r[6] is not None and r[6] >= r[5] for r in loaded)

    # And every delivery succeeded
    def succeeded() -> int:
        page = t.get("/v1/deliveries", destination_id=dest["id"], status="succeeded").json()
        return len(page["data"])

    wait_until(lambda: succeeded() >= 3, timeout=15)

    # When every event is replayed to the destination
    replayed = tidegate.cli(
        "replay", "range", "--tenant", t.id, "--destination", dest["id"],
        "--since", str(int(started * 1000) - 60_000),
    )  # fmt: skip
    assert replayed["replayed"] == 3
    wait_until(lambda: succeeded() >= 6, timeout=30)

    # Then the table still holds one row per event
    ids = [r[0] for r in _query(warehouse, f"SELECT event_id FROM {table}")]  # noqa: S608
    assert len(ids) == 3 and len(set(ids)) == 3


def test_an_account_in_another_region_is_refused_with_422(
    tidegate: Tidegate, warehouse: dict[str, Any], key_file: Path
) -> None:
    t = tidegate.tenant()
    settings = _settings(warehouse, "EVENTS_US", key_file) | {"region": "us"}
    r = _create(t, {"kind": "snowflake", "snowflake": settings})
    assert r.status_code == 422, r.text
    assert "region" in r.json()["detail"]
    assert t.get("/v1/destinations").json() == []


def test_the_api_creates_one_and_never_returns_its_private_key(
    tidegate: Tidegate, warehouse: dict[str, Any], key_file: Path
) -> None:
    t = tidegate.tenant()
    r = _create(t, {"kind": "snowflake", "snowflake": _settings(warehouse, "API_T", key_file)})
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["kind"] == "snowflake" and created["secret"] is None
    assert created["snowflake"]["table"] == "API_T" and created["snowflake"]["schema"] == SCHEMA
    listed = t.get("/v1/destinations").text
    assert "PRIVATE KEY" not in listed and "PRIVATE KEY" not in r.text


def test_a_batch_that_fails_is_retried_until_the_warehouse_is_back(
    tmp_path: Path, key_file: Path
) -> None:
    # Given a worker whose snowflake destination points at a port nobody listens on
    port = free_port()
    tg = Tidegate(tmp_path / "data", extra_env={"TIDEGATE_SNOWFLAKE_TIMEOUT_S": "2"}).start()
    try:
        t = tg.tenant()
        table = f"RETRIED_{time.monotonic_ns()}"
        created = _create(
            t,
            {
                "kind": "snowflake",
                "retry_schedule": "0,1s*60",
                "snowflake": _settings({"host": "127.0.0.1", "port": port}, table, key_file),
            },
        )
        assert created.status_code == 201, created.text
        dest_id = created.json()["id"]

        # When two events are sent while the warehouse is down
        assert t.track("First").status_code == 200
        assert t.track("Second").status_code == 200

        def failed_attempts() -> int:
            page = t.get("/v1/deliveries", destination_id=dest_id, status="pending").json()
            return sum(1 for d in page["data"] if d["attempts"] >= 1 and d["last_error"])

        wait_until(lambda: failed_attempts() >= 2, timeout=30)

        # Then, once it is back, both load exactly once and both deliveries succeed
        with fake_warehouse(port=port) as kwargs:
            with snowflake.connector.connect(**kwargs) as conn:
                conn.cursor().execute(f"CREATE DATABASE IF NOT EXISTS {DATABASE}")
                conn.cursor().execute(f"CREATE SCHEMA IF NOT EXISTS {DATABASE}.{SCHEMA}")

            def succeeded() -> int:
                page = t.get("/v1/deliveries", destination_id=dest_id, status="succeeded").json()
                return len(page["data"])

            wait_until(lambda: succeeded() >= 2, timeout=60)
            names = _query(kwargs, f"SELECT payload:event::string FROM {table}")  # noqa: S608
            assert sorted(n for (n,) in names) == ["First", "Second"]
    finally:
        tg.stop()
