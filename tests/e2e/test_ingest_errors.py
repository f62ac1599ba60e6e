"""Hostile and malformed input: a precise status and problem body, nothing written."""

from __future__ import annotations

import gzip
import json
import sqlite3
import time
from collections.abc import Iterator

import pytest
import requests

from tests.support import TenantHandle, Tidegate


def _log_count(tg: Tidegate) -> int:
    """The log's high-water mark: housekeeping may trim records, never this."""
    with sqlite3.connect(tg.data_dir / "log.db") as c:
        return int(c.execute("SELECT COALESCE(MAX(pos), -1) FROM records").fetchone()[0])


@pytest.fixture(scope="module")
def tenant(tidegate: Tidegate) -> TenantHandle:
    return tidegate.tenant()


@pytest.fixture
def nothing_written(tidegate: Tidegate) -> Iterator[None]:
    before = _log_count(tidegate)
    yield
    assert _log_count(tidegate) == before, "a refused request appended to the log"


def _post(
    tg: Tidegate, path: str, data: bytes | Iterator[bytes], *, key: str | None, **headers: str
) -> requests.Response:
    hdrs = {"content-type": "application/json", **headers}
    auth = (key, "") if key is not None else None
    return requests.post(tg.base + path, data=data, headers=hdrs, auth=auth, timeout=10)


def _problem(r: requests.Response, status: int) -> dict[str, object]:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, object] = r.json()
    for member in ("type", "title", "status", "detail", "code", "message"):
        assert member in body, member
    assert body["status"] == status
    return body


def _track(**extra: object) -> bytes:
    return json.dumps({"userId": "u", "event": "E", **extra}).encode()


BAD_BODIES = {
    "invalid json": (b'{"userId": "u", "event": ', "not valid JSON"),
    "invalid utf-8": (b'{"userId": "u", "event": "\xff\xfe"}', "UTF-8"),
    "nan": (b'{"userId": "u", "event": "E", "properties": {"x": NaN}}', "not valid JSON"),
    "infinity": (b'{"userId": "u", "event": "E", "properties": {"x": Infinity}}', "not valid JSON"),
    "huge float": (b'{"userId": "u", "event": "E", "properties": {"x": 1e999}}', "out of range"),
    "huge integer": (
        b'{"userId": "u", "event": "E", "properties": {"x": 1' + b"0" * 40 + b"}}",
        "out of range",
    ),
    "deep nesting": (
        b'{"userId": "u", "event": "E", "properties": ' + b'{"a":' * 5000 + b"1" + b"}" * 5001,
        "nesting",
    ),
    "moderately deep": (
        b'{"userId": "u", "event": "E", "properties": ' + b"[" * 100 + b"]" * 100 + b"}",
        "nesting",
    ),
    "not an object": (b"[1, 2]", "object"),
    "no identity": (b'{"event": "E"}', "userId or anonymousId"),
    "no event name": (b'{"userId": "u"}', "event"),
    "long messageId": (_track(messageId="m" * 300), "messageId"),
    "numeric messageId": (_track(messageId=12), "messageId"),
    "properties not object": (_track(properties=[1]), "properties"),
    "empty body": (b"", "empty"),
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_bad_bodies_get_400_and_write_nothing(
    tidegate: Tidegate, tenant: TenantHandle, nothing_written: None, case: str
) -> None:
    body, needle = BAD_BODIES[case]
    detail = str(_problem(_post(tidegate, "/v1/track", body, key=tenant.write_key), 400)["detail"])
    assert needle.lower() in detail.lower(), detail


def test_event_over_32kb_is_400(
    tidegate: Tidegate, tenant: TenantHandle, nothing_written: None
) -> None:
    body = _track(properties={"blob": "x" * 33_000})
    assert "limit" in str(
        _problem(_post(tidegate, "/v1/track", body, key=tenant.write_key), 400)["detail"]
    )


def test_batch_over_500kb_is_400(
    tidegate: Tidegate, tenant: TenantHandle, nothing_written: None
) -> None:
    batch = [{"type": "track", "userId": "u", "event": "E", "properties": {"b": "x" * 20_000}}] * 30
    body = json.dumps({"batch": batch}).encode()
    _problem(_post(tidegate, "/v1/batch", body, key=tenant.write_key), 400)


def _chunks(body: bytes, parts: int) -> Iterator[bytes]:
    """A body sent with Transfer-Encoding: chunked (requests does so for an iterator),
    no Content-Length, in `parts` a little apart: the server reads it as several ASGI
    messages."""
    size = -(-len(body) // parts)
    for start in range(0, len(body), size):
        if start:
            time.sleep(0.05)
        yield body[start : start + size]


def test_chunked_batch_is_accepted(tidegate: Tidegate, tenant: TenantHandle) -> None:
    batch = [
        {"type": "track", "userId": "u", "event": "E", "properties": {"n": n}} for n in range(50)
    ]
    before = _log_count(tidegate)
    r = _post(
        tidegate,
        "/v1/batch",
        _chunks(json.dumps({"batch": batch}).encode(), 4),
        key=tenant.write_key,
    )
    assert r.status_code == 200 and r.json() == {"success": True}
    assert _log_count(tidegate) > before


def test_chunked_batch_over_500kb_is_refused(
    tidegate: Tidegate, tenant: TenantHandle, nothing_written: None
) -> None:
    batch = [{"type": "track", "userId": "u", "event": "E", "properties": {"b": "x" * 20_000}}] * 30
    body = json.dumps({"batch": batch}).encode()
    r = _post(tidegate, "/v1/batch", _chunks(body, 10), key=tenant.write_key)
    assert "limit" in str(_problem(r, 400)["detail"])


def test_batch_with_one_bad_message_writes_nothing(
    tidegate: Tidegate, tenant: TenantHandle, nothing_written: None
) -> None:
    batch = [{"type": "track", "userId": "u", "event": "ok"}, {"type": "track", "userId": "u"}]
    body = json.dumps({"batch": batch}).encode()
    assert "batch[1]" in str(
        _problem(_post(tidegate, "/v1/batch", body, key=tenant.write_key), 400)["detail"]
    )


def test_gzip_bomb_is_refused(
    tidegate: Tidegate, tenant: TenantHandle, nothing_written: None
) -> None:
    bomb = gzip.compress(b'{"userId": "u", "event": "' + b"a" * 50_000_000 + b'"}')
    assert len(bomb) < 100_000
    r = _post(tidegate, "/v1/batch", bomb, key=tenant.write_key, **{"content-encoding": "gzip"})
    assert "decompressed" in str(_problem(r, 400)["detail"])


def test_corrupt_gzip_is_400(
    tidegate: Tidegate, tenant: TenantHandle, nothing_written: None
) -> None:
    r = _post(
        tidegate,
        "/v1/track",
        b"\x1f\x8bnot gzip",
        key=tenant.write_key,
        **{"content-encoding": "gzip"},
    )
    _problem(r, 400)


def test_gzip_body_is_accepted(tidegate: Tidegate, tenant: TenantHandle) -> None:
    r = _post(
        tidegate,
        "/v1/track",
        gzip.compress(_track()),
        key=tenant.write_key,
        **{"content-encoding": "gzip"},
    )
    assert r.status_code == 200 and r.json() == {"success": True}


def test_wrong_content_type_is_415(
    tidegate: Tidegate, tenant: TenantHandle, nothing_written: None
) -> None:
    r = _post(
        tidegate, "/v1/track", _track(), key=tenant.write_key, **{"content-type": "application/xml"}
    )
    _problem(r, 415)


def test_missing_write_key_is_401(tidegate: Tidegate, nothing_written: None) -> None:
    r = _post(tidegate, "/v1/track", _track(), key=None)
    _problem(r, 401)
    assert "WWW-Authenticate" in r.headers


def test_wrong_write_key_is_401(tidegate: Tidegate, nothing_written: None) -> None:
    _problem(_post(tidegate, "/v1/track", _track(), key="wk_not-a-key"), 401)


def test_write_key_in_body_is_accepted_and_not_stored(
    tidegate: Tidegate, tenant: TenantHandle
) -> None:
    r = _post(
        tidegate, "/v1/track", _track(writeKey=tenant.write_key, messageId="wk-body"), key=None
    )
    assert r.status_code == 200
    from tests.support import wait_until

    events = wait_until(lambda: tenant.get("/v1/events").json()["data"])
    full = tenant.get(f"/v1/events/{events[0]['id']}").json()
    assert "writeKey" not in full["payload"]


def test_tenant_comes_from_the_credential_not_the_body(tidegate: Tidegate) -> None:
    """Basic auth of tenant A with tenant B's key in the body: the event is A's."""
    from tests.support import wait_until

    a, b = tidegate.tenant(), tidegate.tenant()
    body = _track(writeKey=b.write_key, messageId="cross-1")
    assert _post(tidegate, "/v1/track", body, key=a.write_key).status_code == 200
    wait_until(lambda: a.get("/v1/events").json()["data"])
    assert b.get("/v1/events").json()["data"] == []


def test_missing_message_id_is_assigned(tidegate: Tidegate) -> None:
    from tests.support import wait_until

    t = tidegate.tenant()
    assert t.track().status_code == 200
    events = wait_until(lambda: t.get("/v1/events").json()["data"])
    assert events[0]["message_id"]


def test_a_cell_refuses_to_create_another_regions_tenant(tidegate: Tidegate) -> None:
    done = tidegate.cli("tenants", "create", "elsewhere", "--region", "us", check=False)
    assert done.returncode == 1 and "pinned to region 'us'" in done.stderr
    assert "elsewhere" not in {t["name"] for t in tidegate.cli("tenants", "list")}


CE_BAD = {
    "no specversion": {"id": "1", "source": "s", "type": "t"},
    "no id": {"specversion": "1.0", "source": "s", "type": "t"},
    "bad attribute name": {
        "specversion": "1.0",
        "id": "1",
        "source": "s",
        "type": "t",
        "Bad-Name": 1,
    },
    "data and data_base64": {
        "specversion": "1.0",
        "id": "1",
        "source": "s",
        "type": "t",
        "data": 1,
        "data_base64": "AA==",
    },
}


@pytest.mark.parametrize("case", sorted(CE_BAD))
def test_invalid_cloudevents_are_400(
    tidegate: Tidegate, tenant: TenantHandle, nothing_written: None, case: str
) -> None:
    r = requests.post(
        tidegate.base + "/v1/cloudevents",
        auth=(tenant.write_key, ""),
        data=json.dumps(CE_BAD[case]),
        headers={"content-type": "application/cloudevents+json"},
        timeout=10,
    )
    _problem(r, 400)


def test_cloudevents_wrong_media_type_is_415(
    tidegate: Tidegate, tenant: TenantHandle, nothing_written: None
) -> None:
    r = requests.post(
        tidegate.base + "/v1/cloudevents",
        auth=(tenant.write_key, ""),
        data=b"{}",
        headers={"content-type": "text/csv"},
        timeout=10,
    )
    _problem(r, 415)
