"""Creating destinations over HTTP: SSRF refused with 422, validation, the secret once."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import requests
from standardwebhooks.webhooks import Webhook

from tests.support import Receiver, TenantHandle, Tidegate, wait_until

REFUSED = [
    "http://127.0.0.2/x",
    "http://localhost/x",
    "http://[::1]/x",
    "http://[::ffff:127.0.0.2]/x",
    "http://2130706434/x",
    "http://0177.0.0.2/x",
    "http://0x7f.0.0.2/x",
    "http://10.0.0.1/x",
    "http://192.168.1.1/x",
    "http://172.16.0.1/x",
    "http://169.254.169.254/latest/meta-data",
    "http://[fd00:ec2::254]/",
    "http://100.64.0.1/",
    "http://0.0.0.0/",
    "http://224.0.0.1/",
    "http://[64:ff9b::7f00:2]/",
    "http://[2002:7f00:2::]/",
    "http://user:pass@127.0.0.1/",
    "http://example.com@127.0.0.2/",
    "ftp://127.0.0.1/",
    "file:///etc/passwd",
    "gopher://127.0.0.1:70/",
]


def _create(t: TenantHandle, body: dict[str, Any]) -> requests.Response:
    return requests.post(
        t.tg.base + "/v1/destinations",
        json=body,
        headers={"authorization": f"Bearer {t.api_key}"},
        timeout=10,
    )


@pytest.fixture(scope="module")
def tenant(tidegate: Tidegate) -> TenantHandle:
    return tidegate.tenant()


@pytest.mark.parametrize("url", REFUSED)
def test_internal_urls_are_refused_with_422(tenant: TenantHandle, url: str) -> None:
    r = _create(tenant, {"url": url})
    assert r.status_code == 422, (url, r.text)
    assert r.headers["content-type"].startswith("application/problem+json")
    assert tenant.get("/v1/destinations").json() == []


def test_created_destination_receives_signed_events(
    tenant: TenantHandle, receiver: Receiver
) -> None:
    path = f"/{uuid.uuid4().hex}"
    r = _create(tenant, {"url": receiver.on(path, 200), "name": "api-made"})
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["secret"].startswith("whsec_")
    assert "secret" not in tenant.get(f"/v1/destinations/{created['id']}").json()
    tenant.track("Via API destination")
    (got,) = wait_until(lambda: receiver.at(path))
    assert (
        Webhook(created["secret"]).verify(got.body, got.headers)["event"] == "Via API destination"
    )


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"url": "http://127.0.0.1:1/x", "tenant_id": "ten_other"}, 400),
        ({"url": "http://127.0.0.1:1/x", "filter": "type =="}, 422),
        ({"url": "http://127.0.0.1:1/x", "transform": '{"nope": []}'}, 422),
        ({"url": "http://127.0.0.1:1/x", "retry_schedule": "5 years"}, 422),
        ({"url": "http://127.0.0.1:1/x", "timeout_s": 0}, 400),
        ({}, 400),
    ],
)
def test_invalid_destinations_are_refused(
    tenant: TenantHandle, body: dict[str, Any], status: int
) -> None:
    before = tenant.get("/v1/destinations").json()
    r = _create(tenant, body)
    assert r.status_code == status, r.text
    assert r.json()["detail"]
    assert tenant.get("/v1/destinations").json() == before
