"""Housekeeping trims the log and purges old events; key rotation needs no restart."""

from __future__ import annotations

import sqlite3
import uuid

from standardwebhooks.webhooks import Webhook

from tests.support import Receiver, Tidegate, wait_until


def _log_records(tg: Tidegate) -> int:
    with sqlite3.connect(tg.data_dir / "log.db") as c:
        return int(c.execute("SELECT COUNT(*) FROM records").fetchone()[0])


def test_old_events_are_purged_and_the_log_trimmed(fresh_dir, receiver: Receiver) -> None:  # type: ignore[no-untyped-def]
    tg = Tidegate(
        fresh_dir,
        extra_env={
            "TIDEGATE_HOUSEKEEPING_INTERVAL_S": "0.3",
            "TIDEGATE_EVENT_RETENTION_DAYS": "0.00002",  # about 1.7 s
        },
    ).start()
    try:
        t = tg.tenant()
        path = f"/{uuid.uuid4().hex}"
        t.destination(receiver.on(path, 200))
        for i in range(5):
            t.track(f"E{i}")
        wait_until(lambda: len(receiver.at(path)) == 5)
        assert len(t.get("/v1/events").json()["data"]) == 5
        wait_until(lambda: t.get("/v1/events").json()["data"] == [], timeout=15)
        assert t.get("/v1/deliveries").json()["data"] == []
        wait_until(lambda: _log_records(tg) <= 1, timeout=10)
        t.track("After purge")  # offsets keep growing after a trim
        wait_until(lambda: len(receiver.at(path)) == 6)
    finally:
        assert tg.stop() == 0


def test_key_rotation_while_serving(tidegate: Tidegate, receiver: Receiver) -> None:
    """Rotate from the CLI: old and new data stay readable, new secrets decrypt in serve."""
    t = tidegate.tenant()
    old_path, new_path = f"/{uuid.uuid4().hex}", f"/{uuid.uuid4().hex}"
    t.destination(receiver.on(old_path, 200))
    t.track("Before")
    wait_until(lambda: receiver.at(old_path))
    assert tidegate.cli("keys", "rotate", "--tenant", t.id)["key_version"] == 2
    dest = t.destination(receiver.on(new_path, 200))  # its secret is sealed with version 2
    t.track("After")
    (got,) = wait_until(lambda: receiver.at(new_path))
    assert Webhook(dest["secret"]).verify(got.body, got.headers)["event"] == "After"
    names = {e["name"] for e in t.get("/v1/events").json()["data"]}
    assert names == {"Before", "After"}
