"""The arithmetic of a webhook lane's in-flight limit (pipeline/deliver.py, `_adapt`):
additive increase while deliveries queue, halving on distress once per episode, within
TIDEGATE_DESTINATION_CONCURRENCY and _MAX. tests/e2e/test_lane_limit.py shows it against
a real endpoint."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from tidegate.cli.common import load_settings
from tidegate.destinations.base import Outcome
from tidegate.model import DestinationId
from tidegate.pipeline.deliver import Dispatcher, Lane
from tidegate.runtime import open_runtime

OK, BAD_REQUEST = Outcome(status_code=200), Outcome(status_code=400)
DISTRESS = (
    Outcome(status_code=429),
    Outcome(status_code=503),
    Outcome(error="timed out"),
    Outcome(error="connection refused"),
)


@pytest.fixture
async def dispatcher(tmp_path: Path) -> AsyncIterator[Dispatcher]:
    settings = load_settings(
        data_dir=tmp_path / "data",
        region="eu",
        destination_concurrency=4,
        destination_concurrency_max=10,
    )
    rt = open_runtime(settings)
    try:
        yield Dispatcher(rt, sender=None, on_recovered=lambda: None)  # type: ignore[arg-type]
    finally:
        await rt.aclose()


def _cuts() -> float:
    value = REGISTRY.get_sample_value("tidegate_destination_concurrency_cuts_total")
    assert value is not None
    return value


def _queued(dispatcher: Dispatcher, queued: int) -> Lane:
    lane = dispatcher._lane(DestinationId("dst_limit"))
    lane.backlog.extend([None] * queued)  # type: ignore[list-item] # only its length counts
    return lane


async def test_a_lane_grows_by_one_per_limits_worth_of_answers_while_deliveries_queue(
    dispatcher: Dispatcher,
) -> None:
    lane = _queued(dispatcher, 1)
    assert lane.limit == 4
    # 1/limit each: 4.25, 4.49, 4.71, 4.92, 5.12 (a 4xx is an answer too: the endpoint
    # is up and keeping up)
    for _ in range(4):
        dispatcher._adapt(lane, BAD_REQUEST, time.monotonic())
    assert int(lane.limit) == 4
    dispatcher._adapt(lane, OK, time.monotonic())
    assert int(lane.limit) == 5
    for _ in range(100):
        dispatcher._adapt(lane, OK, time.monotonic())
    assert lane.limit == 10  # no further than _MAX


async def test_a_lane_with_nothing_queued_stays_where_it_is(dispatcher: Dispatcher) -> None:
    lane = _queued(dispatcher, 0)
    for _ in range(100):
        dispatcher._adapt(lane, OK, time.monotonic())
    assert lane.limit == 4


@pytest.mark.parametrize("distress", DISTRESS, ids=lambda o: str(o.status_code or o.error))
async def test_distress_halves_a_lane_once_per_episode_and_never_below_its_start(
    dispatcher: Dispatcher, distress: Outcome
) -> None:
    lane = _queued(dispatcher, 1)
    lane.limit = 10.0
    cuts = _cuts()
    before_the_cut = time.monotonic()
    dispatcher._adapt(lane, distress, before_the_cut)
    assert lane.limit == 5
    # an attempt under way when it was cut belongs to the same episode
    dispatcher._adapt(lane, distress, before_the_cut)
    assert lane.limit == 5
    # one started after it is a new episode, and the cut stops at the start
    dispatcher._adapt(lane, distress, time.monotonic())
    assert lane.limit == 4
    assert _cuts() == cuts + 2
    dispatcher._adapt(lane, distress, time.monotonic())  # at the start already: no cut
    assert lane.limit == 4 and _cuts() == cuts + 2


async def test_a_maximum_at_or_below_the_start_keeps_the_lane_fixed(tmp_path: Path) -> None:
    settings = load_settings(
        data_dir=tmp_path / "data", region="eu", destination_concurrency=8,
        destination_concurrency_max=2,
    )  # fmt: skip
    rt = open_runtime(settings)
    try:
        dispatcher = Dispatcher(rt, sender=None, on_recovered=lambda: None)  # type: ignore[arg-type]
        lane = _queued(dispatcher, 1)
        for _ in range(100):
            dispatcher._adapt(lane, OK, time.monotonic())
        assert lane.limit == 8
    finally:
        await rt.aclose()
