"""Snowflake destinations end to end: `tidegate serve`, the Segment SDK, the real
Snowflake connector, and fakesnow's server standing in for the warehouse."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import snowflake.connector
from prometheus_client.parser import text_string_to_metric_families
from segment.analytics.client import Client as SegmentClient

from tests.support import Receiver, TenantHandle, Tidegate, free_port, wait_until
from tests.warehouse import DATABASE, SCHEMA, fake_warehouse, private_key_pem


@pytest.fixture(scope="module")
def warehouse() -> Iterator[dict[str, Any]]:
    with fake_warehouse() as kwargs:
        yield kwargs


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "rsa_key.p8"
    path.write_text(private_key_pem())
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

            def succeeded() -> int:
                page = t.get("/v1/deliveries", destination_id=dest_id, status="succeeded").json()
                return len(page["data"])

            wait_until(lambda: succeeded() >= 2, timeout=60)
            names = _query(kwargs, f"SELECT payload:event::string FROM {table}")  # noqa: S608
            assert sorted(n for (n,) in names) == ["First", "Second"]
    finally:
        tg.stop()


def _target_ddl(table: str, user_id_type: str = "STRING") -> str:
    """The table Tidegate creates, as a customer might create it first with narrower types."""
    return (
        f"CREATE TABLE {table} (event_id STRING PRIMARY KEY, tenant_id STRING, type STRING,"
        f" event_name STRING, user_id {user_id_type}, anonymous_id STRING, message_id STRING,"
        " sent_at TIMESTAMP_TZ, received_at TIMESTAMP_TZ, loaded_at TIMESTAMP_TZ,"
        " payload VARIANT)"
    )


def _post_batch(t: TenantHandle, messages: list[dict[str, Any]]) -> None:
    r = requests.post(
        t.tg.base + "/v1/batch", json={"batch": messages}, auth=(t.write_key, ""), timeout=10
    )
    assert r.status_code == 200, r.text


def _deliveries(t: TenantHandle, destination_id: str, status: str) -> list[dict[str, Any]]:
    page = t.get("/v1/deliveries", destination_id=destination_id, status=status, limit=500)
    data: list[dict[str, Any]] = page.json()["data"]
    return data


def _metric(tg: Tidegate, name: str, **labels: str) -> float:
    """A sample of /metrics (0 if absent)."""
    for family in text_string_to_metric_families(
        requests.get(tg.base + "/metrics", timeout=10).text
    ):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def test_a_row_snowflake_refuses_is_a_dead_letter_and_the_rest_of_its_batch_lands_once(
    tidegate: Tidegate, warehouse: dict[str, Any], key_file: Path, receiver: Receiver
) -> None:
    # Given a table the customer created with user_id NUMBER (their user ids are numeric),
    # a second snowflake destination with Tidegate's own table, and a webhook
    t = tidegate.tenant()
    narrow, wide = f"NARROW_{time.monotonic_ns()}", f"WIDE_{time.monotonic_ns()}"
    _query(warehouse, _target_ddl(narrow, user_id_type="NUMBER"))
    made = [
        _create(t, {"kind": "snowflake", "snowflake": _settings(warehouse, table, key_file)})
        for table in (narrow, wide)
    ]
    assert all(r.status_code == 201 for r in made), [r.text for r in made]
    narrow_id, wide_id = (r.json()["id"] for r in made)
    path = f"/refusals-{time.monotonic_ns()}"
    hook = t.destination(receiver.url(path))

    # When one batch of 12 events arrives, one of them with a user id that is no number
    run = uuid.uuid4().hex[:8]
    users = [str(1001 + n) for n in range(12)]
    users[7] = "guest-7"
    _post_batch(
        t,
        [
            {"type": "track", "userId": u, "event": "Refusal Test", "messageId": f"{run}-{n}"}
            for n, u in enumerate(users)
        ],
    )

    # Then the other 11 land in the narrow table and its delivery is a dead letter...
    wait_until(lambda: len(_deliveries(t, narrow_id, "succeeded")) >= 11, timeout=30)
    (dead,) = wait_until(lambda: _deliveries(t, narrow_id, "dead"), timeout=30)
    assert dead["attempts"] == 1 and dead["last_error"].startswith("snowflake refused the row:")
    assert "'***'" in dead["last_error"] and "guest-7" not in dead["last_error"]
    assert t.get(f"/v1/events/{dead['event_id']}").json()["payload"]["userId"] == "guest-7"
    (letter,) = t.get("/v1/dead-letters", destination_id=narrow_id).json()["data"]
    assert letter["id"] == dead["id"]
    (history,) = [
        d for d in t.get(f"/v1/events/{dead['event_id']}/deliveries").json()
        if d["destination_id"] == narrow_id
    ]  # fmt: skip
    (attempt,) = history["attempt_log"]
    assert attempt["outcome"] == "failed" and attempt["error"] == dead["last_error"]
    rows = _query(warehouse, f"SELECT message_id, user_id FROM {narrow}")  # noqa: S608
    assert sorted(m for m, _ in rows) == sorted(f"{run}-{n}" for n in range(12) if n != 7)
    assert {u for _, u in rows} == {int(u) for u in users if u != "guest-7"}

    # ...all 12 were one batch, isolated by bisection...
    batches = [
        json.loads(line)
        for line in tidegate.logs().splitlines()
        if line.startswith("{") and '"snowflake.batch_loaded"' in line and narrow_id in line
    ]
    assert [(b["rows"], b["loaded"], b["refused"]) for b in batches] == [(12, 11, 1)]
    assert batches[0]["loads"] > 1

    # ...and the other destinations got all 12, once each
    wait_until(lambda: len(_deliveries(t, wide_id, "succeeded")) >= 12, timeout=30)
    wide_rows = _query(warehouse, f"SELECT message_id, user_id FROM {wide}")  # noqa: S608
    assert sorted(m for m, _ in wide_rows) == sorted(f"{run}-{n}" for n in range(12))
    wait_until(lambda: len(receiver.at(path)) >= 12, timeout=15)
    assert len(receiver.at(path)) == 12
    assert _deliveries(t, hook["id"], "dead") == [] and _deliveries(t, wide_id, "dead") == []

    # And /metrics counts them per destination
    assert (
        _metric(tidegate, "tidegate_warehouse_rows_rejected_total", destination_id=narrow_id) == 1
    )
    assert _metric(tidegate, "tidegate_warehouse_rows_loaded_total", destination_id=narrow_id) == 11
    assert _metric(tidegate, "tidegate_warehouse_rows_loaded_total", destination_id=wide_id) == 12
    assert (
        _metric(
            tidegate,
            "tidegate_warehouse_batches_total",
            destination_id=narrow_id,
            result="isolated",
        )
        == 1
    )
    assert (
        _metric(tidegate, "tidegate_warehouse_freshness_seconds_count", destination_id=narrow_id)
        == 11
    )

    # When the customer fixes the column and replays the destination's dead letters
    _query(warehouse, f"ALTER TABLE {narrow} RENAME COLUMN user_id TO user_number")
    _query(warehouse, f"ALTER TABLE {narrow} ADD COLUMN user_id STRING")
    replayed = requests.post(
        tidegate.base + f"/v1/destinations/{narrow_id}/dead-letters/replay",
        headers={"authorization": f"Bearer {t.api_key}"},
        timeout=10,
    )
    assert replayed.json() == {"replayed": 1}

    # Then the refused event lands too, same delivery, and the table holds each event once
    wait_until(lambda: len(_deliveries(t, narrow_id, "succeeded")) >= 12, timeout=30)
    ids = [m for (m,) in _query(warehouse, f"SELECT message_id FROM {narrow}")]  # noqa: S608
    assert sorted(ids) == sorted(f"{run}-{n}" for n in range(12))
    assert _deliveries(t, narrow_id, "dead") == []


def _patch(t: TenantHandle, destination_id: str, body: dict[str, Any]) -> requests.Response:
    return requests.patch(
        t.tg.base + f"/v1/destinations/{destination_id}",
        json=body,
        headers={"authorization": f"Bearer {t.api_key}"},
        timeout=10,
    )


def _message_ids(warehouse: dict[str, Any], table: str) -> list[str]:
    try:
        return [m for (m,) in _query(warehouse, f"SELECT message_id FROM {table}")]  # noqa: S608
    except snowflake.connector.ProgrammingError:
        return []  # not created yet


def test_a_patched_table_takes_new_events_while_none_is_lost_or_loaded_twice(
    tidegate: Tidegate, warehouse: dict[str, Any], key_file: Path
) -> None:
    # Given a snowflake destination loading into OLD while a client sends 120 events
    t = tidegate.tenant()
    old, new = f"OLD_{time.monotonic_ns()}", f"NEW_{time.monotonic_ns()}"
    created = _create(
        t,
        {
            "kind": "snowflake",
            "retry_schedule": "0,1s*30",
            "snowflake": _settings(warehouse, old, key_file),
        },
    )
    assert created.status_code == 201, created.text
    dest_id = created.json()["id"]
    sent: list[str] = []

    def send() -> None:
        for n in range(120):
            mid = f"move-{n}-{uuid.uuid4().hex[:8]}"
            body = {"userId": "u1", "event": "Move", "messageId": mid}
            r = requests.post(
                tidegate.base + "/v1/track", json=body, auth=(t.write_key, ""), timeout=10
            )
            assert r.status_code == 200
            sent.append(mid)
            time.sleep(0.025)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()

    # When, mid-stream, the table is changed through the API
    wait_until(lambda: len(sent) >= 40, timeout=30)
    r = _patch(t, dest_id, {"snowflake": {"table": new}})
    assert r.status_code == 200, r.text
    assert r.json()["snowflake"]["table"] == new and "PRIVATE KEY" not in r.text
    assert r.json()["url"].endswith(f"/{DATABASE}.{SCHEMA}.{new}")
    sender.join(timeout=60)
    assert len(sent) == 120
    time.sleep(3)  # longer than a worker's destination cache (2 s): every worker has switched
    late = f"late-{uuid.uuid4().hex[:8]}"
    assert t.track("Move", messageId=late).status_code == 200

    # Then every event is in exactly one of the two tables, exactly once; the later ones in NEW
    expected = {*sent, late}
    wait_until(
        lambda: set(_message_ids(warehouse, old)) | set(_message_ids(warehouse, new)) >= expected,
        timeout=30,
    )
    in_old, in_new = _message_ids(warehouse, old), _message_ids(warehouse, new)
    assert len(in_old) == len(set(in_old)) and len(in_new) == len(set(in_new))
    assert not set(in_old) & set(in_new)
    assert set(in_old) | set(in_new) == expected
    assert late in in_new and in_old and sent[0] in in_old
    assert len(_deliveries(t, dest_id, "succeeded")) == 121

    # And the change is audited, naming what changed but not the values
    (record,) = [
        r for r in t.get("/v1/audit").json()["data"] if r["action"] == "destination.update"
    ]
    assert record["resource"] == dest_id and record["detail"] == "snowflake.table"


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"region": "us"}, "region"),
        ({"table": "EVENTS; DROP TABLE X"}, "snowflake.table"),
        ({"account": "acct/../x"}, "snowflake.account"),
        ({"private_key": "-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n"}, "PEM"),
    ],
)
def test_a_refused_settings_change_is_a_422_and_changes_nothing(
    tidegate: Tidegate, warehouse: dict[str, Any], key_file: Path, change: dict[str, str], says: str
) -> None:
    t = tidegate.tenant()
    created = _create(t, {"kind": "snowflake", "snowflake": _settings(warehouse, "KEEP", key_file)})
    dest_id = created.json()["id"]
    r = _patch(t, dest_id, {"snowflake": change})
    assert r.status_code == 422, r.text
    assert says in r.json()["detail"]
    unchanged = {k: v for k, v in created.json().items() if k != "secret"}
    assert t.get(f"/v1/destinations/{dest_id}").json() == unchanged


def test_a_webhook_has_no_snowflake_settings_to_patch(
    tidegate: Tidegate, receiver: Receiver
) -> None:
    t = tidegate.tenant()
    hook = t.destination(receiver.url("/no-snowflake"))
    r = _patch(t, hook["id"], {"snowflake": {"table": "X"}})
    assert r.status_code == 422 and "no snowflake settings" in r.json()["detail"]


def test_the_cli_changes_table_and_key_and_keeps_the_key_encrypted(
    tidegate: Tidegate, warehouse: dict[str, Any], key_file: Path, tmp_path: Path
) -> None:
    # Given a snowflake destination made with the CLI, loading into FIRST
    t = tidegate.tenant()
    first, second = f"FIRST_{time.monotonic_ns()}", f"SECOND_{time.monotonic_ns()}"
    dest = tidegate.cli(
        "destinations", "create", "--tenant", t.id, "--kind", "snowflake",
        "--snowflake-account", "acme-eu", "--snowflake-user", "TIDEGATE",
        "--snowflake-role", "LOADER", "--snowflake-warehouse", "LOADING",
        "--snowflake-database", DATABASE, "--snowflake-schema", SCHEMA,
        "--snowflake-table", first, "--snowflake-region", "eu",
        "--snowflake-private-key-file", str(key_file),
        "--snowflake-host", warehouse["host"], "--snowflake-port", str(warehouse["port"]),
        "--snowflake-protocol", "http",
    )  # fmt: skip
    assert t.track("Before", messageId="cli-before").status_code == 200
    wait_until(lambda: _message_ids(warehouse, first) == ["cli-before"], timeout=30)

    # When an operator moves it to SECOND with a new key
    pem = private_key_pem()
    new_key_file = tmp_path / "new_key.p8"
    new_key_file.write_text(pem)
    out = tidegate.cli(
        "destinations", "update", "--tenant", t.id, "--destination", dest["id"],
        "--snowflake-table", second, "--snowflake-private-key-file", str(new_key_file),
    )  # fmt: skip

    # Then the output names the new table and never the key, and new events land there
    assert out["url"].endswith(f".{second}") and "PRIVATE KEY" not in json.dumps(out)
    time.sleep(3)  # longer than a worker's destination cache (2 s)
    assert t.track("After", messageId="cli-after").status_code == 200
    wait_until(lambda: _message_ids(warehouse, second) == ["cli-after"], timeout=30)
    assert _message_ids(warehouse, first) == ["cli-before"]
    assert any(
        '"loader.reconfigured"' in line and dest["id"] in line
        for line in tidegate.logs().splitlines()
    )

    # And the key is stored encrypted: no line of it is in any file of the data dir
    secret_line = pem.splitlines()[5].encode()
    for path in tidegate.data_dir.rglob("*"):
        if path.is_file():
            assert secret_line not in path.read_bytes(), path

    # And the change is audited with what changed (not the values)
    records = tidegate.cli("audit", "list", "--tenant", t.id)
    (record,) = [r for r in records if r["action"] == "destination.update"]
    assert record["resource"] == dest["id"] and record["actor"].startswith("cli:")
    assert record["detail"] == "snowflake.private_key, snowflake.table"

    # And a change the creation would refuse is refused, nothing changed
    refused = tidegate.cli(
        "destinations", "update", "--tenant", t.id, "--destination", dest["id"],
        "--snowflake-region", "us", check=False,
    )  # fmt: skip
    assert refused.returncode == 1 and "region" in refused.stderr
    (listed,) = tidegate.cli("destinations", "list", "--tenant", t.id)
    assert listed["url"].endswith(f".{second}")
