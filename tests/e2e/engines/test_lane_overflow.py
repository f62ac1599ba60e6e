"""A destination slower than its events arrive: its lane overflows into the store, and the
deliveries still go out oldest first (pipeline/deliver.py, `Lane.spilling`).

A real server on each engine combination, with a lane of 20 (`TIDEGATE_LANE_BACKLOG`) and
two attempts in flight per destination, a receiver that answers after 40 ms (so at most 50
deliveries a second), and events sent one after another over HTTP, faster than that.
"""

from __future__ import annotations

import json
import uuid

import requests

from tests.engine_combos import Engine
from tests.support import Receiver, Tidegate, wait_until

EVENTS = 200
LANE_BACKLOG = 20


def _spilled(tg: Tidegate) -> float:
    metrics = requests.get(tg.base + "/metrics", timeout=10).text
    for line in metrics.splitlines():
        if line.startswith("tidegate_deliveries_spilled_total "):
            return float(line.split()[1])
    raise AssertionError("no tidegate_deliveries_spilled_total in /metrics")


def test_an_overflowing_lane_still_delivers_oldest_first(
    engine: Engine, receiver: Receiver
) -> None:
    tg = engine.tidegate(
        env={
            "TIDEGATE_LANE_BACKLOG": str(LANE_BACKLOG),
            "TIDEGATE_DESTINATION_CONCURRENCY": "2",
            "TIDEGATE_DESTINATION_CONCURRENCY_MAX": "2",
        }
    ).start()
    try:
        t = tg.tenant()
        path = f"/{uuid.uuid4().hex}"
        t.destination(receiver.on(path, "slow:0.04"))
        for n in range(EVENTS):
            assert t.track("E", properties={"n": n}).status_code == 200
        got = wait_until(lambda: len(receiver.at(path)) >= EVENTS and receiver.at(path), 60)
        order = [json.loads(r.body)["properties"]["n"] for r in got]
        assert sorted(order) == list(range(EVENTS))
        assert len({r.headers["webhook-id"] for r in got}) == EVENTS
        # The lane overflowed (the test measures what it means to) ...
        assert _spilled(tg) > 0
        # ... and yet no event was overtaken by many sent after it: the lane's backlog,
        # the two in flight and a router batch at most. Before, the overflow waited in
        # the store until the events stopped coming, overtaken by most of what followed.
        newest = -1
        overtaken = 0
        for n in order:
            newest = max(newest, n)
            overtaken = max(overtaken, newest - n)
        assert overtaken <= 3 * LANE_BACKLOG, order
        wait_until(
            lambda: (
                len(t.get("/v1/deliveries", status="succeeded", limit=500).json()["data"]) == EVENTS
            )
        )
    finally:
        tg.stop()
