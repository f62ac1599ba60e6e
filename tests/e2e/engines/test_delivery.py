"""End to end: events in through the API, signed webhooks out, retries, dead letters, replay."""

from __future__ import annotations

import json
import time
import uuid

import requests
from standardwebhooks.webhooks import Webhook

from tests.support import Receiver, Tidegate, wait_until


def _path() -> str:
    return f"/{uuid.uuid4().hex}"


def test_tracked_event_arrives_signed_and_verifies(tidegate: Tidegate, receiver: Receiver) -> None:
    """A track call is acknowledged with Segment's body and delivered with a valid signature."""
    t = tidegate.tenant()
    path = _path()
    dest = t.destination(receiver.on(path, 200))
    r = t.track("Order Completed", properties={"total": 42})
    assert r.status_code == 200 and r.json() == {"success": True}
    (got,) = wait_until(lambda: receiver.at(path))
    payload = Webhook(dest["secret"]).verify(got.body, got.headers)
    assert payload["event"] == "Order Completed"
    assert payload["properties"] == {"total": 42}
    assert payload["messageId"] and payload["receivedAt"].endswith("Z")
    assert got.headers["webhook-id"].startswith("msg_")
    assert got.headers["content-type"] == "application/json"


def test_retries_keep_the_webhook_id_and_record_every_attempt(
    tidegate: Tidegate, receiver: Receiver
) -> None:
    t = tidegate.tenant()
    path = _path()
    t.destination(receiver.on(path, 503, 500, 200), "--retry-schedule", "0,1s,1s")
    assert t.track().status_code == 200
    got = wait_until(lambda: len(receiver.at(path)) == 3 and receiver.at(path), timeout=15)
    assert len({g.headers["webhook-id"] for g in got}) == 1
    events = wait_until(lambda: t.get("/v1/events").json()["data"])
    deliveries = wait_until(
        lambda: [
            d
            for d in t.get(f"/v1/events/{events[0]['id']}/deliveries").json()
            if d["status"] == "succeeded"
        ]
    )
    codes = [a["status_code"] for a in deliveries[0]["attempt_log"]]
    assert codes == [503, 500, 200]
    assert deliveries[0]["id"] == got[0].headers["webhook-id"]


def test_exhausted_schedule_dead_letters_then_replay_delivers_same_id(
    tidegate: Tidegate, receiver: Receiver
) -> None:
    t = tidegate.tenant()
    path = _path()
    dest = t.destination(receiver.on(path, 500, 500, 200), "--retry-schedule", "0,0.2s")
    assert t.track().status_code == 200
    dead = wait_until(lambda: t.get("/v1/dead-letters").json()["data"], timeout=15)
    assert dead[0]["attempts"] == 2 and dead[0]["last_error"] == "HTTP 500"
    r = requests.post(
        f"{tidegate.base}/v1/destinations/{dest['id']}/dead-letters/replay",
        headers={"authorization": f"Bearer {t.api_key}"},
        timeout=10,
    )
    assert r.status_code == 202 and r.json() == {"replayed": 1}
    got = wait_until(lambda: len(receiver.at(path)) == 3 and receiver.at(path), timeout=15)
    assert got[-1].headers["webhook-id"] == dead[0]["id"]
    wait_until(lambda: not t.get("/v1/dead-letters").json()["data"])


def test_410_disables_the_destination(tidegate: Tidegate, receiver: Receiver) -> None:
    t = tidegate.tenant()
    path = _path()
    dest = t.destination(receiver.on(path, 410))
    t.track()
    wait_until(lambda: t.get(f"/v1/destinations/{dest['id']}").json()["status"] == "disabled")
    assert "410" in t.get(f"/v1/destinations/{dest['id']}").json()["disabled_reason"]
    t.track()
    time.sleep(0.5)
    assert len(receiver.at(path)) == 1  # nothing more goes to a disabled destination


def test_4xx_without_retry_dead_letters_at_once(tidegate: Tidegate, receiver: Receiver) -> None:
    t = tidegate.tenant()
    path = _path()
    t.destination(receiver.on(path, 400), "--no-retry-4xx")
    t.track()
    dead = wait_until(lambda: t.get("/v1/dead-letters").json()["data"])
    assert dead[0]["attempts"] == 1


def test_retry_after_is_honoured(tidegate: Tidegate, receiver: Receiver) -> None:
    t = tidegate.tenant()
    path = _path()
    receiver.headers_out[path] = {"retry-after": "2"}
    t.destination(receiver.on(path, 429, 200), "--retry-schedule", "0,0.1s")
    t.track()
    got = wait_until(lambda: len(receiver.at(path)) == 2 and receiver.at(path), timeout=10)
    assert got[1].at - got[0].at >= 1.8


def test_redirect_is_a_failure_and_not_followed(tidegate: Tidegate, receiver: Receiver) -> None:
    t = tidegate.tenant()
    path, target = _path(), _path()
    receiver.headers_out[path] = {"location": receiver.url(target)}
    t.destination(receiver.on(path, 302), "--retry-schedule", "0")
    t.track()
    dead = wait_until(lambda: t.get("/v1/dead-letters").json()["data"])
    assert dead[0]["last_error"] == "HTTP 302"
    assert receiver.at(target) == []


def test_filter_selects_and_transform_reshapes(tidegate: Tidegate, receiver: Receiver) -> None:
    t = tidegate.tenant()
    path = _path()
    spec = json.dumps(
        {"rename": {"properties.total": "amount"}, "redact": ["context.ip"], "drop": ["properties"]}
    )
    t.destination(
        receiver.on(path, 200),
        "--filter",
        "type == 'track' && event == 'Order Completed'",
        "--transform",
        spec,
    )
    t.track("Page Viewed")
    t.track("Order Completed", properties={"total": 7}, context={"ip": "10.1.2.3"})
    (got,) = wait_until(lambda: receiver.at(path))
    body = got.json()
    assert body["event"] == "Order Completed"
    assert body["amount"] == 7 and "properties" not in body
    assert body["context"]["ip"] == "[REDACTED]"
    time.sleep(0.3)
    assert len(receiver.at(path)) == 1


def test_duplicate_message_id_is_acknowledged_and_delivered_once(
    tidegate: Tidegate, receiver: Receiver
) -> None:
    t = tidegate.tenant()
    path = _path()
    t.destination(receiver.on(path, 200))
    for _ in range(3):
        assert t.track(messageId="same-id-1").status_code == 200
    wait_until(lambda: receiver.at(path))
    t.track("Marker")  # a later event proves the duplicates were routed (and dropped) already
    wait_until(lambda: len(receiver.at(path)) >= 2)
    time.sleep(0.3)
    assert [r.json()["event"] for r in receiver.at(path)] == ["Order Completed", "Marker"]


def test_replay_event_and_range_send_again_with_new_ids(
    tidegate: Tidegate, receiver: Receiver
) -> None:
    t = tidegate.tenant()
    path = _path()
    dest = t.destination(receiver.on(path, 200))
    t.track()
    (first,) = wait_until(lambda: receiver.at(path))
    event_id = t.get("/v1/events").json()["data"][0]["id"]
    replayed = tidegate.cli("replay", "event", event_id, "--tenant", t.id)
    assert replayed == {"replayed": 1}
    got = wait_until(lambda: len(receiver.at(path)) == 2 and receiver.at(path), timeout=10)
    assert got[1].headers["webhook-id"] != first.headers["webhook-id"]
    replayed = tidegate.cli(
        "replay", "range", "--tenant", t.id, "--destination", dest["id"], "--since", "0"
    )
    assert replayed == {"replayed": 1}
    wait_until(lambda: len(receiver.at(path)) == 3, timeout=10)


def test_replays_of_two_tenants_each_carry_their_own_events(
    tidegate: Tidegate, receiver: Receiver
) -> None:
    """Replayed deliveries are claimed from the store, their events read back together
    (one query per tenant, `Dispatcher.load_bodies`): each arrives with its own event's
    body, signed with its own tenant's secret."""
    tenants = [tidegate.tenant(), tidegate.tenant()]
    paths = [_path(), _path()]
    secrets = []
    for t, path in zip(tenants, paths, strict=True):
        secrets.append(t.destination(receiver.on(path, 200))["secret"])
        for n in range(5):
            assert t.track(f"{t.id}-{n}", properties={"n": n}).status_code == 200
    for path in paths:
        wait_until(lambda p=path: len(receiver.at(p)) == 5)
    for t in tenants:
        (destination,) = t.get("/v1/destinations").json()
        replay = t.call("POST", f"/v1/destinations/{destination['id']}/replay", {"since": "0"})
        assert replay.status_code == 202 and replay.json() == {"replayed": 5}, replay.text
    for t, path, secret in zip(tenants, paths, secrets, strict=True):
        got = wait_until(lambda p=path: len(receiver.at(p)) == 10 and receiver.at(p), timeout=15)
        first, replayed = got[:5], got[5:]
        assert not {g.headers["webhook-id"] for g in first} & {
            g.headers["webhook-id"] for g in replayed
        }
        assert {g.headers["content-type"] for g in replayed} == {"application/json"}
        bodies = [Webhook(secret).verify(g.body, g.headers) for g in replayed]
        assert sorted((b["event"], b["properties"]["n"]) for b in bodies) == [
            (f"{t.id}-{n}", n) for n in range(5)
        ]
        originals = {b["messageId"]: b for b in (json.loads(g.body) for g in first)}
        assert all(originals[b["messageId"]] == b for b in bodies)


def test_hanging_destination_does_not_delay_a_healthy_one(
    tidegate: Tidegate, receiver: Receiver
) -> None:
    """No head-of-line blocking: the healthy destination's latency stays low."""
    t = tidegate.tenant()
    hang, healthy = _path(), _path()
    t.destination(receiver.on(hang, "hang"), "--timeout", "30")
    t.destination(receiver.on(healthy, 200))
    latencies = []
    for i in range(40):
        sent = time.monotonic()
        t.track(f"E{i}")
        wait_until(lambda n=i + 1: len(receiver.at(healthy)) >= n, timeout=10, interval=0.002)
        latencies.append(receiver.at(healthy)[-1].at - sent)
    latencies.sort()
    assert latencies[int(len(latencies) * 0.95)] < 0.5, latencies


def test_cloudevents_structured_binary_and_batch(tidegate: Tidegate, receiver: Receiver) -> None:
    t = tidegate.tenant()
    path = _path()
    dest = t.destination(receiver.on(path, 200))
    base = {"specversion": "1.0", "source": "/orders", "type": "order.created"}
    r = requests.post(
        tidegate.base + "/v1/cloudevents",
        auth=(t.write_key, ""),
        data=json.dumps({**base, "id": "1", "data": {"n": 1}}),
        headers={"content-type": "application/cloudevents+json"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    r = requests.post(
        tidegate.base + "/v1/cloudevents",
        auth=(t.write_key, ""),
        data=b'{"n": 2}',
        headers={
            "content-type": "application/json",
            "ce-specversion": "1.0",
            "ce-id": "2",
            "ce-source": "/orders",
            "ce-type": "order.created",
        },
        timeout=10,
    )
    assert r.status_code == 200, r.text
    r = requests.post(
        tidegate.base + "/v1/cloudevents",
        auth=(t.write_key, ""),
        data=json.dumps([{**base, "id": "3"}, {**base, "id": "1"}]),
        headers={"content-type": "application/cloudevents-batch+json"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    got = wait_until(lambda: len(receiver.at(path)) >= 3 and receiver.at(path))
    time.sleep(0.3)
    bodies = [Webhook(dest["secret"]).verify(g.body, g.headers) for g in receiver.at(path)]
    assert sorted(b["id"] for b in bodies) == ["1", "2", "3"]  # id 1 resent: deduplicated
    assert got[0].headers["content-type"] == "application/cloudevents+json"
    assert next(b for b in bodies if b["id"] == "2")["data"] == {"n": 2}
