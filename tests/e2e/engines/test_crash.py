"""Durable before acknowledged: SIGKILL mid-stream loses no acknowledged event, on every engine."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.engine_combos import Engine
from tests.support import Receiver, wait_until

TOTAL = 10_000


# Sending takes 10-25 s and delivering 10-20 s on the 2-core test machine; a shared store adds
# its crash recovery (60 s): more than the suite's default 120 s timeout leaves under load.
@pytest.mark.timeout(300)
def test_sigkill_while_sending_loses_nothing_acknowledged(
    engine: Engine, receiver: Receiver
) -> None:
    tg = engine.tidegate().start()
    t = tg.tenant()
    path = f"/crash-{uuid.uuid4().hex}"
    t.destination(receiver.on(path, 200))
    acked: set[str] = set()
    lock = threading.Lock()
    local = threading.local()

    def send(i: int) -> None:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        message_id = f"crash-{i}"
        body = {"userId": "u", "event": "Crash Test", "messageId": message_id}
        for _ in range(600):  # a client retries until acknowledged, as the SDKs do
            try:
                r = session.post(
                    tg.base + "/v1/track", json=body, auth=(t.write_key, ""), timeout=5
                )
            except requests.RequestException:
                time.sleep(0.05)  # back off while the server restarts
                continue
            if r.status_code == 200:
                with lock:
                    acked.add(message_id)
                return

    killed = threading.Event()

    def killer() -> None:
        wait_until(lambda: len(acked) >= TOTAL // 3, timeout=120, interval=0.01)
        tg.kill()
        killed.set()
        tg.start()

    k = threading.Thread(target=killer)
    k.start()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(send, range(TOTAL)))
    k.join()
    assert killed.is_set()
    try:
        assert len(acked) == TOTAL

        def delivered() -> set[str]:
            return {r.json()["messageId"] for r in receiver.at(path)}

        wait_until(
            lambda: acked <= delivered(),
            timeout=90 + engine.store.crash_recovery_s,
            interval=0.2,
        )
        by_message: dict[str, set[str]] = {}
        for r in receiver.at(path):
            by_message.setdefault(r.json()["messageId"], set()).add(r.headers["webhook-id"])
        # duplicates only ever carry the same webhook-id
        assert all(len(ids) == 1 for ids in by_message.values())
    finally:
        assert tg.stop() == 0
