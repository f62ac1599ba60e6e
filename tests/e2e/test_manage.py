"""The management API: sources and write keys, destination updates, deletes and secret
rotation, tenant isolation, audit, and the CLI equivalents."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import requests
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.support import Received, Receiver, TenantHandle, Tidegate, wait_until

# Ingest and the API cache credential lookups for 10 s: a revoked key may work that long.
CACHE_TIMEOUT_S = 15


def _path() -> str:
    return f"/{uuid.uuid4().hex}"


def _ingest(tg: Tidegate, write_key: str) -> int:
    body = {"userId": "u1", "event": "Key check"}
    r = requests.post(tg.base + "/v1/track", json=body, auth=(write_key, ""), timeout=10)
    return r.status_code


def _verifies(secret: str, got: Received) -> bool:
    try:
        Webhook(secret).verify(got.body, got.headers)
    except WebhookVerificationError:
        return False
    return True


def _only_source_id(t: TenantHandle) -> str:
    (source,) = t.get("/v1/sources").json()
    return str(source["id"])


def test_source_lifecycle_create_list_rotate_revoke(tidegate: Tidegate) -> None:
    """A new source's key ingests; rotation retires the old key; revocation the new one."""
    t = tidegate.tenant()
    r = t.call("POST", "/v1/sources", {"name": "web"})
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["name"] == "web" and created["write_key"].startswith("wk_eu_")
    first_key = created["write_key"]
    assert _ingest(tidegate, first_key) == 200

    listed = t.get("/v1/sources")
    assert listed.status_code == 200
    assert created["id"] in [s["id"] for s in listed.json()]
    assert "write_key" not in listed.text and first_key not in listed.text

    r = t.call("POST", f"/v1/sources/{created['id']}/rotate-key")
    assert r.status_code == 200, r.text
    rotated = r.json()
    assert rotated["id"] == created["id"] and rotated["previous_key_expires_at"] is None
    second_key = rotated["write_key"]
    assert second_key != first_key
    assert _ingest(tidegate, second_key) == 200
    wait_until(lambda: _ingest(tidegate, first_key) == 401, timeout=CACHE_TIMEOUT_S, interval=0.5)

    assert t.call("DELETE", f"/v1/sources/{created['id']}").status_code == 204
    wait_until(lambda: _ingest(tidegate, second_key) == 401, timeout=CACHE_TIMEOUT_S, interval=0.5)
    assert created["id"] not in [s["id"] for s in t.get("/v1/sources").json()]
    assert t.call("POST", f"/v1/sources/{created['id']}/rotate-key").status_code == 404
    assert t.call("DELETE", f"/v1/sources/{created['id']}").status_code == 404


def test_rotated_key_with_overlap_leaves_both_keys_working(tidegate: Tidegate) -> None:
    t = tidegate.tenant()
    source_id = _only_source_id(t)
    r = t.call("POST", f"/v1/sources/{source_id}/rotate-key", {"overlap_s": 3600})
    assert r.status_code == 200, r.text
    assert r.json()["previous_key_expires_at"] is not None
    # The old key was never used before, so no cache answers for it: the store does.
    assert _ingest(tidegate, t.write_key) == 200
    assert _ingest(tidegate, r.json()["write_key"]) == 200


def test_destination_secret_rotation_signs_with_both_during_the_overlap(
    tidegate: Tidegate, receiver: Receiver
) -> None:
    t = tidegate.tenant()
    path = _path()
    dest = t.destination(receiver.on(path, 200))
    r = t.call("POST", f"/v1/destinations/{dest['id']}/rotate-secret", {})
    assert r.status_code == 200, r.text
    rotated = r.json()
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != dest["secret"]
    assert rotated["previous_secret_expires_at"] is not None
    assert "secret" not in t.get(f"/v1/destinations/{dest['id']}").json()

    t.track("Signed twice")
    (got,) = wait_until(lambda: receiver.at(path))
    assert len(got.headers["webhook-signature"].split()) == 2
    for secret in (dest["secret"], rotated["secret"]):
        assert Webhook(secret).verify(got.body, got.headers)["event"] == "Signed twice"


def test_destination_secret_rotation_without_overlap_signs_with_the_new_only(
    tidegate: Tidegate, receiver: Receiver
) -> None:
    t = tidegate.tenant()
    path = _path()
    dest = t.destination(receiver.on(path, 200))
    r = t.call("POST", f"/v1/destinations/{dest['id']}/rotate-secret", {"overlap_s": 0})
    assert r.status_code == 200, r.text
    assert r.json()["previous_secret_expires_at"] is None
    t.track("Signed once")
    (got,) = wait_until(lambda: receiver.at(path))
    assert _verifies(r.json()["secret"], got)
    assert not _verifies(dest["secret"], got)


def test_previous_secret_stops_signing_when_the_overlap_ends(
    tidegate: Tidegate, receiver: Receiver
) -> None:
    t = tidegate.tenant()
    path = _path()
    dest = t.destination(receiver.on(path, 200))
    r = t.call("POST", f"/v1/destinations/{dest['id']}/rotate-secret", {"overlap_s": 1})
    new_secret = r.json()["secret"]

    def delivered_with_one_signature() -> Received | None:
        seen = len(receiver.at(path))
        t.track("Probe")
        got = wait_until(lambda: receiver.at(path)[seen:])[0]
        return got if len(got.headers["webhook-signature"].split()) == 1 else None

    got = wait_until(delivered_with_one_signature, timeout=15, interval=0.3)
    assert _verifies(new_secret, got)
    assert not _verifies(dest["secret"], got)


def test_patch_re_enables_a_410_disabled_destination(
    tidegate: Tidegate, receiver: Receiver
) -> None:
    t = tidegate.tenant()
    path = _path()
    dest = t.destination(receiver.on(path, 410, 200))
    t.track("Before")
    wait_until(lambda: t.get(f"/v1/destinations/{dest['id']}").json()["status"] == "disabled")

    r = t.call("PATCH", f"/v1/destinations/{dest['id']}", {"enabled": True})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "enabled" and r.json()["disabled_reason"] is None

    t.track("After")
    got = wait_until(lambda: len(receiver.at(path)) == 2 and receiver.at(path))
    assert Webhook(dest["secret"]).verify(got[1].body, got[1].headers)["event"] == "After"


def test_patch_changes_url_and_filter(tidegate: Tidegate, receiver: Receiver) -> None:
    t = tidegate.tenant()
    old_path, new_path = _path(), _path()
    dest = t.destination(receiver.on(old_path, 200))
    change = {"url": receiver.on(new_path, 200), "filter": "event == 'Keep'", "name": "moved"}
    r = t.call("PATCH", f"/v1/destinations/{dest['id']}", change)
    assert r.status_code == 200, r.text
    assert {k: r.json()[k] for k in change} == change

    t.track("Drop")
    t.track("Keep")
    (got,) = wait_until(lambda: receiver.at(new_path))
    assert got.json()["event"] == "Keep"
    assert receiver.at(old_path) == []
    r = t.call("PATCH", f"/v1/destinations/{dest['id']}", {"filter": None})
    assert r.status_code == 200 and r.json()["filter"] is None


@pytest.mark.parametrize(
    "change",
    [
        {"url": "http://169.254.169.254/latest/meta-data", "name": "stolen"},
        {"url": "http://10.0.0.1/x"},
        {"filter": "type =="},
        {"transform": '{"nope": []}'},
        {"retry_schedule": "5 years"},
    ],
)
def test_patch_refused_by_validation_is_422_and_changes_nothing(
    tidegate: Tidegate, receiver: Receiver, change: dict[str, Any]
) -> None:
    t = tidegate.tenant()
    dest = t.destination(receiver.on(_path(), 200))
    before = t.get(f"/v1/destinations/{dest['id']}").json()
    r = t.call("PATCH", f"/v1/destinations/{dest['id']}", change)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert t.get(f"/v1/destinations/{dest['id']}").json() == before


@pytest.fixture(scope="module")
def owner(tidegate: Tidegate, receiver: Receiver) -> tuple[TenantHandle, str, str]:
    """A tenant with one source and one destination: (tenant, source id, destination id)."""
    t = tidegate.tenant()
    return t, _only_source_id(t), t.destination(receiver.on(_path(), 200))["id"]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/sources", {"name": "x", "tenant_id": "ten_other"}),
        ("POST", "/v1/sources/{source}/rotate-key", {"overlap": 5}),
        ("POST", "/v1/sources/{source}/rotate-key", {"overlap_s": 86_401}),
        ("PATCH", "/v1/destinations/{destination}", {"tenant_id": "ten_other"}),
        ("PATCH", "/v1/destinations/{destination}", {"url": None}),
        ("PATCH", "/v1/destinations/{destination}", {"enabled": None}),
        ("POST", "/v1/destinations/{destination}/rotate-secret", {"overlap": 5}),
        ("POST", "/v1/destinations/{destination}/rotate-secret", {"overlap_s": 604_801}),
    ],
)
def test_unknown_or_invalid_fields_are_400(
    owner: tuple[TenantHandle, str, str], method: str, path: str, body: dict[str, Any]
) -> None:
    t, source_id, destination_id = owner
    before = t.get(f"/v1/destinations/{destination_id}").json()
    r = t.call(method, path.format(source=source_id, destination=destination_id), body)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert t.get(f"/v1/destinations/{destination_id}").json() == before
    assert _ingest(t.tg, t.write_key) == 200


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/sources/{source}/rotate-key", None),
        ("DELETE", "/v1/sources/{source}", None),
        ("PATCH", "/v1/destinations/{destination}", {"name": "stolen"}),
        ("PATCH", "/v1/destinations/{destination}", {"enabled": False}),
        ("DELETE", "/v1/destinations/{destination}", None),
        ("POST", "/v1/destinations/{destination}/rotate-secret", {"overlap_s": 0}),
    ],
)
def test_another_tenants_ids_are_404(
    tidegate: Tidegate,
    owner: tuple[TenantHandle, str, str],
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    t, source_id, destination_id = owner
    intruder = tidegate.tenant()
    before = t.get(f"/v1/destinations/{destination_id}").json()
    r = intruder.call(method, path.format(source=source_id, destination=destination_id), body)
    assert r.status_code == 404, r.text
    assert source_id not in intruder.get("/v1/sources").text
    assert t.get(f"/v1/destinations/{destination_id}").json() == before
    assert _ingest(tidegate, t.write_key) == 200


def test_deleted_destination_gets_no_events_and_its_pending_become_dead_letters(
    tidegate: Tidegate, receiver: Receiver
) -> None:
    t = tidegate.tenant()
    keep_path, gone_path = _path(), _path()
    t.destination(receiver.on(keep_path, 200))
    gone = t.destination(receiver.on(gone_path, 500), "--retry-schedule", "0,1h")
    t.track("First")
    wait_until(
        lambda: [
            d
            for d in t.get("/v1/deliveries", destination_id=gone["id"]).json()["data"]
            if d["status"] == "pending" and d["attempts"] == 1
        ]
    )

    assert t.call("DELETE", f"/v1/destinations/{gone['id']}").status_code == 204
    assert t.get(f"/v1/destinations/{gone['id']}").status_code == 404
    (dead,) = t.get("/v1/dead-letters", destination_id=gone["id"]).json()["data"]
    assert dead["last_error"] == "destination deleted"

    t.track("Second")
    wait_until(lambda: len(receiver.at(keep_path)) == 2)
    assert len(receiver.at(gone_path)) == 1
    assert t.call("DELETE", f"/v1/destinations/{gone['id']}").status_code == 404


def test_every_change_is_audited(tidegate: Tidegate, receiver: Receiver) -> None:
    t = tidegate.tenant()
    source = t.call("POST", "/v1/sources", {"name": "audited"}).json()
    t.call("POST", f"/v1/sources/{source['id']}/rotate-key")
    t.call("DELETE", f"/v1/sources/{source['id']}")
    dest = t.destination(receiver.on(_path(), 200))
    t.call("PATCH", f"/v1/destinations/{dest['id']}", {"name": "renamed"})
    t.call("POST", f"/v1/destinations/{dest['id']}/rotate-secret")
    t.call("DELETE", f"/v1/destinations/{dest['id']}")
    records = t.get("/v1/audit").json()["data"]
    changes = [(r["action"], r["resource"]) for r in records if r["action"] not in ("audit.read",)]
    assert changes[:7] == [
        ("destination.delete", dest["id"]),
        ("destination.rotate_secret", dest["id"]),
        ("destination.update", dest["id"]),
        ("destination.create", dest["id"]),  # made by the CLI, audited too
        ("source.revoke", source["id"]),
        ("source.rotate_key", source["id"]),
        ("source.create", source["id"]),
    ]


def test_cli_manages_sources_api_keys_and_destinations(
    tidegate: Tidegate, receiver: Receiver
) -> None:
    t = tidegate.tenant()
    dest = t.destination(receiver.on(_path(), 200))
    target = ("--tenant", t.id, "--destination", dest["id"])
    assert tidegate.cli("destinations", "update", *target, "--disable")["status"] == "disabled"
    enabled = tidegate.cli("destinations", "update", *target, "--enable", "--name", "cli")
    assert enabled["status"] == "enabled" and enabled["disabled_reason"] is None
    refused = tidegate.cli(
        "destinations", "update", *target, "--url", "http://10.0.0.1/", check=False
    )
    assert refused.returncode == 1
    assert t.get(f"/v1/destinations/{dest['id']}").json()["name"] == "cli"
    secret = tidegate.cli("destinations", "rotate-secret", *target, "--overlap-s", "0")
    assert secret["secret"].startswith("whsec_") and secret["previous_secret_expires_at_ms"] is None
    assert tidegate.cli("destinations", "delete", *target)["deleted"] is True
    assert tidegate.cli("destinations", "list", "--tenant", t.id) == []

    (source,) = tidegate.cli("sources", "list", "--tenant", t.id)
    rotated = tidegate.cli(
        "sources", "rotate-key", "--tenant", t.id, "--source", source["id"], "--overlap", "60"
    )
    assert _ingest(tidegate, rotated["write_key"]) == 200
    assert _ingest(tidegate, t.write_key) == 200
    refused = tidegate.cli(
        "sources", "revoke", "--tenant", tidegate.tenant().id, "--source", source["id"], check=False
    )
    assert refused.returncode == 1 and "no source" in refused.stderr
    tidegate.cli("sources", "revoke", "--tenant", t.id, "--source", source["id"])
    assert tidegate.cli("sources", "list", "--tenant", t.id) == []
    tidegate.cli("apikeys", "revoke", "--tenant", t.id, "--key", t.api_key)
    wait_until(
        lambda: (
            _ingest(tidegate, rotated["write_key"]) == 401
            and _ingest(tidegate, t.write_key) == 401
            and t.get("/v1/sources").status_code == 401
        ),
        timeout=CACHE_TIMEOUT_S,
        interval=0.5,
    )
