"""Small pieces of the ingest path that are made cheap: they must say what the plain
versions say."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from starlette.requests import Request

from tidegate.api.ingest.body import header
from tidegate.api.ingest.segment import _iso


def test_received_at_is_iso_8601_utc_to_the_millisecond() -> None:
    rng = random.Random(7)  # noqa: S311 - reproducible test data
    for ms in [
        0,
        999,
        1_000,
        1_796_551_479_215,
        *(rng.randrange(4_102_444_800_000) for _ in range(20_000)),
    ]:
        expected = datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
        assert _iso(ms) == expected.replace("+00:00", "Z")


def test_header_is_the_first_value_with_or_without_front() -> None:
    raw = [(b"content-type", b"application/json"), (b"x-a", b"1"), (b"x-a", b"2")]
    plain = Request({"type": "http", "headers": raw})
    first: dict[bytes, bytes] = {}
    for name, value in raw:
        first.setdefault(name, value)
    fronted = Request({"type": "http", "headers": raw, "tidegate.headers": first})
    for request in (plain, fronted):
        assert header(request, b"content-type") == "application/json"
        assert header(request, b"x-a") == "1"  # as Starlette's Headers.get: the first
        assert header(request, b"content-encoding") is None
