"""Durable before acknowledged: SIGKILL mid-stream loses no acknowledged event."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import requests

from tests.support import Receiver, Tidegate, wait_until

TOTAL = 10_000


def test_sigkill_while_sending_loses_nothing_acknowledged(fresh_dir, receiver: Receiver) -> None:  # type: ignore[no-untyped-def]
    tg = Tidegate(fresh_dir).start()
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

        wait_until(lambda: acked <= delivered(), timeout=120, interval=0.2)
        by_message: dict[str, set[str]] = {}
        for r in receiver.at(path):
            by_message.setdefault(r.json()["messageId"], set()).add(r.headers["webhook-id"])
        # duplicates only ever carry the same webhook-id
        assert all(len(ids) == 1 for ids in by_message.values())
    finally:
        assert tg.stop() == 0
