"""When a spilling lane takes the router's deliveries again (pipeline/deliver.py): only
after a claim that began once every hand-back of that lane was in the store, with no
hand-back since, found nothing more to claim. A real runtime and store; the deliveries'
destination does not exist, so the few attempts the lane starts end at once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tidegate.cli.common import load_settings
from tidegate.errors import BackendUnavailable
from tidegate.ids import new_delivery_id, new_event_id, now_ms
from tidegate.model import Delivery, DeliveryStatus, DestinationId, TenantId
from tidegate.pipeline.deliver import Dispatcher
from tidegate.runtime import open_runtime

DESTINATION = DestinationId("dst_spill")


def _delivery() -> Delivery:
    now = now_ms()
    return Delivery(
        id=new_delivery_id(),
        tenant_id=TenantId("ten_spill"),
        event_id=new_event_id(),
        destination_id=DESTINATION,
        status=DeliveryStatus.PENDING,
        attempts=0,
        next_attempt_at_ms=now,
        created_at_ms=now,
        updated_at_ms=now,
    )


async def _settled(dispatcher: Dispatcher) -> None:
    for _ in range(500):
        if not dispatcher._lanes[DESTINATION].handing_back:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the hand-back never reached the store")


async def test_a_spilling_lane_takes_router_deliveries_again_only_when_the_store_has_none(
    tmp_path: Path,
) -> None:
    settings = load_settings(
        data_dir=tmp_path / "data",
        region="eu",
        destination_concurrency=1,
        destination_concurrency_max=1,
        lane_backlog=1,
    )
    rt = open_runtime(settings)
    dispatcher = Dispatcher(rt, sender=None, on_recovered=lambda: None)  # type: ignore[arg-type]
    try:
        first, second, third = _delivery(), _delivery(), _delivery()
        dispatcher.submit([first, second, third])
        lane = dispatcher._lanes[DESTINATION]
        assert lane.spilling and lane.spilled == 1
        assert dispatcher.is_known(first.id)
        assert not dispatcher.is_known(second.id) and not dispatcher.is_known(third.id)
        # the hand-back is not in the store yet: a claim now could not see it
        assert dispatcher.spill_marks() == {}
        await _settled(dispatcher)
        marks = dispatcher.spill_marks()
        assert marks == {DESTINATION: 1}

        # the router hands one more back while the claim runs: the lane keeps spilling
        dispatcher.submit([_delivery()])
        dispatcher.claimed_all(marks, exclude=())
        assert lane.spilling and lane.spilled == 2

        await _settled(dispatcher)
        marks = dispatcher.spill_marks()
        # a claim that left the lane out says nothing of it
        dispatcher.claimed_all(marks, exclude=[DESTINATION])
        assert lane.spilling
        # claimed deliveries go on the lane even while it spills (room permitting)
        await asyncio.sleep(0.05)  # the lane's one attempt ends: its backlog is empty
        claimed = _delivery()
        dispatcher.submit([claimed], claimed=True)
        assert dispatcher.is_known(claimed.id) and lane.spilled == 2

        dispatcher.claimed_all(marks, exclude=())
        assert not lane.spilling
        await asyncio.sleep(0.05)
        routed = _delivery()
        dispatcher.submit([routed])
        assert dispatcher.is_known(routed.id) and lane.spilled == 2
    finally:
        await dispatcher.drain(1)
        await rt.aclose()


async def test_claimed_deliveries_whose_events_cannot_be_read_are_left_to_their_attempt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`load_bodies` reads what it can; a tenant whose read fails is skipped (each of its
    deliveries reads its event again at its attempt), not the whole claim lost."""
    rt = open_runtime(load_settings(data_dir=tmp_path / "data", region="eu"))
    dispatcher = Dispatcher(rt, sender=None, on_recovered=lambda: None)  # type: ignore[arg-type]

    async def refuse(tenant_id: TenantId, event_ids: object) -> list[object]:
        raise BackendUnavailable("the store is away")

    try:
        monkeypatch.setattr(rt.store.events, "get_events", refuse)
        assert await dispatcher.load_bodies([_delivery(), _delivery()]) == {}
    finally:
        await rt.aclose()
