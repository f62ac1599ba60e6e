"""Encryption at the append boundary: a marker sent in an event is in no database file."""

from __future__ import annotations

import uuid

from tests.support import Receiver, Tidegate, wait_until


def test_marker_is_in_no_database_file(fresh_dir, receiver: Receiver) -> None:  # type: ignore[no-untyped-def]
    tg = Tidegate(fresh_dir).start()
    try:
        t = tg.tenant()
        path = f"/{uuid.uuid4().hex}"
        t.destination(receiver.on(path, 200))
        marker = f"MARKER-{uuid.uuid4().hex}"
        r = t.track(
            f"Event {marker}",
            userId=f"user-{marker}",
            messageId=f"mid-{marker}",
            properties={"note": marker},
            context={"ip": marker},
        )
        assert r.status_code == 200
        (got,) = wait_until(lambda: receiver.at(path))
        assert marker.encode() in got.body  # delivered in clear to the receiver, over the wire
        events = t.get("/v1/events").json()["data"]
        assert (
            t.get(f"/v1/events/{events[0]['id']}").json()["payload"]["properties"]["note"] == marker
        )
        files = [
            p
            for p in fresh_dir.iterdir()
            if p.suffix in (".db",) or "-wal" in p.name or "-shm" in p.name
        ]
        assert any(p.name.endswith("-wal") for p in files), [p.name for p in files]
        for p in files:
            data = p.read_bytes()
            assert marker.encode() not in data, p.name
            assert marker.encode("utf-16-le") not in data, p.name
    finally:
        assert tg.stop() == 0
    for p in fresh_dir.iterdir():  # after shutdown (WAL checkpointed into the main files)
        if p.suffix == ".db" or p.name.endswith(("-wal", "-shm", ".log")):
            if p.suffix == ".log":
                assert marker not in p.read_text(errors="replace"), "payload leaked into logs"
            else:
                assert marker.encode() not in p.read_bytes(), p.name
