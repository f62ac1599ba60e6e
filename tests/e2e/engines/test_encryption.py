"""Encryption at the append boundary: a marker sent in an event is in no stored byte.

Stored bytes are everything the engine keeps (SQLite files, every row of the PostgreSQL
database, every Kafka record with its key and headers) and every file in the data dir,
server logs included; checked while the server runs and after it has shut down.
"""

from __future__ import annotations

import uuid

from tests.engine_combos import Engine, Part
from tests.support import Receiver, wait_until


def _forms(marker: str) -> dict[str, bytes]:
    """The marker as it could appear at rest: UTF-8, UTF-16, hex (PostgreSQL's bytea text)."""
    raw = marker.encode()
    return {"utf-8": raw, "utf-16-le": marker.encode("utf-16-le"), "hex": raw.hex().encode()}


def _assert_absent(engine: Engine, marker: str) -> None:
    forms = _forms(marker)
    for item in engine.stored():
        for form, needle in forms.items():
            assert needle not in item.data, f"marker ({form}) stored in clear: {item.where}"


def _assert_holds(part: Part, text: str) -> None:
    """The scan sees this engine's data: a value it keeps in clear (a tenant id) is found."""
    assert any(text.encode() in item.data for item in part.stored()), (part, text)


def test_marker_is_in_no_stored_byte(engine: Engine, receiver: Receiver) -> None:
    tg = engine.tidegate().start()
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
        _assert_holds(engine.store, t.id)
        _assert_holds(engine.log, t.id)  # the record key
        _assert_absent(engine, marker)
    finally:
        assert tg.stop() == 0
    _assert_absent(engine, marker)  # after shutdown (SQLite's WAL checkpointed, logs flushed)
    assert str(tg.log_path) in {item.where for item in engine.stored()}  # logs were scanned
