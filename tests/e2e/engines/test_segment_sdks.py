"""The unmodified Segment and RudderStack Python SDKs, pointed at Tidegate, just work."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from rudderstack.analytics.client import Client as RudderClient
from segment.analytics.client import Client as SegmentClient
from standardwebhooks.webhooks import Webhook

from tests.support import Receiver, Tidegate, wait_until


def _drive(client: Any) -> None:
    client.identify("user-7", {"email": "a@example.com", "plan": "pro"})
    client.track("user-7", "Order Completed", {"total": 99.5, "currency": "EUR"})
    client.page("user-7", "Docs", "Pricing", {"url": "https://example.com/p"})
    client.screen("user-7", "App", "Home")
    client.group("user-7", "group-1", {"name": "Acme"})
    client.alias("user-7", "user-8")
    client.flush()


@pytest.mark.parametrize(
    ("sdk", "factory"),
    [
        (
            "segment",
            lambda key, host, errors: SegmentClient(
                key, host=host, on_error=lambda e, b: errors.append(e), max_retries=1, gzip=True
            ),
        ),
        (
            "rudder",
            lambda key, host, errors: RudderClient(
                key, host=host, on_error=lambda e, b: errors.append(e), max_retries=1
            ),
        ),
    ],
)
def test_sdk_events_are_acknowledged_and_delivered_signed(
    tidegate: Tidegate, receiver: Receiver, sdk: str, factory: Any
) -> None:
    t = tidegate.tenant()
    path = f"/{sdk}-{uuid.uuid4().hex}"
    dest = t.destination(receiver.on(path, 200))
    errors: list[Exception] = []
    client = factory(t.write_key, tidegate.base, errors)
    _drive(client)
    client.shutdown()
    assert errors == []
    got = wait_until(lambda: len(receiver.at(path)) >= 6 and receiver.at(path), timeout=15)
    bodies = [Webhook(dest["secret"]).verify(g.body, g.headers) for g in got]
    assert sorted(b["type"] for b in bodies) == sorted(
        ["identify", "track", "page", "screen", "group", "alias"]
    )
    track = next(b for b in bodies if b["type"] == "track")
    assert track["event"] == "Order Completed" and track["properties"]["total"] == 99.5
    assert track["context"]["library"]["name"]  # the SDK's own context survives
    assert all(b["messageId"] and b["receivedAt"] for b in bodies)


def test_rudder_sdk_gets_code_and_message_on_error(tidegate: Tidegate) -> None:
    """The Rudder SDK reads `code` and `message`: a bad key is an APIError, not a retry loop."""
    from rudderstack.analytics.request import APIError, post

    with pytest.raises(APIError) as info:
        post("wk_wrong", host=tidegate.base, batch=[{"type": "track", "userId": "u", "event": "E"}])
    assert info.value.status == 401
    assert info.value.code == "unauthorized"
