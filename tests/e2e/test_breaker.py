"""A failing destination trips its breaker; once it recovers, the backlog drains quickly."""

from __future__ import annotations

import time
import uuid

from tests.support import Receiver, Tidegate, wait_until


def test_breaker_stops_hammering_and_backlog_drains_after_recovery(
    fresh_dir,  # type: ignore[no-untyped-def]
    receiver: Receiver,
) -> None:
    tg = Tidegate(
        fresh_dir,
        extra_env={"TIDEGATE_BREAKER_FAILURES": "3", "TIDEGATE_BREAKER_COOLDOWN_S": "1"},
    ).start()
    try:
        t = tg.tenant()
        path = f"/{uuid.uuid4().hex}"
        # Every attempt retries every 200 ms for a long while: without a breaker, 20 events
        # would cost ~100 attempts per second.
        t.destination(receiver.on(path, 503), "--retry-schedule", "0,0.2s*99")
        for i in range(20):
            t.track(f"E{i}")
        time.sleep(3)
        hits_while_down = len(receiver.at(path))
        assert hits_while_down < 40, hits_while_down
        receiver.on(path, 200)
        recovered_at = time.monotonic()
        wait_until(
            lambda: (
                len({r.headers["webhook-id"] for r in receiver.at(path)[hits_while_down:]}) == 20
            ),
            timeout=15,
        )
        assert time.monotonic() - recovered_at < 7  # the last cooldown (4 s) + the drain
        wait_until(lambda: t.get("/v1/deliveries", status="succeeded", limit=50).json()["data"])
    finally:
        assert tg.stop() == 0
