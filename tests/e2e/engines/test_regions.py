"""Cells are pinned to a region: another region's credential is 421 before any lookup."""

from __future__ import annotations

import json

import pytest
import requests

from tests.engine_combos import Engine
from tests.support import Tidegate


def _misdirected(r: requests.Response) -> dict[str, object]:
    assert r.status_code == 421, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, object] = r.json()
    for member in ("type", "title", "status", "detail", "code", "message"):
        assert member in body, member
    assert body["status"] == 421
    return body


def test_other_region_tenant_gets_421_and_nothing_is_written(
    tidegate: Tidegate, shared_engine: Engine, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A us tenant's credentials sent to the eu cell: 421 naming the us endpoint."""
    us_cell = Tidegate(tmp_path_factory.mktemp("us") / "data", region="us").start()
    try:
        us = us_cell.tenant(region="us")
    finally:
        assert us_cell.stop() == 0
    assert us.write_key.startswith("wk_us_")
    before = shared_engine.log.high_water()
    r = requests.post(
        tidegate.base + "/v1/track",
        auth=(us.write_key, ""),
        json={"userId": "u", "event": "E"},
        timeout=10,
    )
    body = _misdirected(r)
    assert body["region"] == "us" and "us" in str(body["endpoint"])
    r = requests.post(
        tidegate.base + "/v1/cloudevents",
        auth=(us.write_key, ""),
        data=json.dumps({"specversion": "1.0", "id": "1", "source": "s", "type": "t"}),
        headers={"content-type": "application/cloudevents+json"},
        timeout=10,
    )
    _misdirected(r)
    r = requests.get(
        tidegate.base + "/v1/events", headers={"authorization": f"Bearer {us.api_key}"}, timeout=10
    )
    _misdirected(r)
    assert shared_engine.log.high_water() == before, "a refused request appended to the log"
