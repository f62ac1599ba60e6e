"""Cross-region transfers: a tenant's events load into another region's warehouse only
while the tenant has recorded its consent, through the API or the CLI."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import snowflake.connector
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fakesnow import server as fake_warehouse

from tests.support import TenantHandle, Tidegate, wait_until

DATABASE, SCHEMA = "ANALYTICS", "RAW"


@pytest.fixture(scope="module")
def warehouse() -> Iterator[dict[str, Any]]:
    with fake_warehouse() as kwargs:
        with snowflake.connector.connect(**kwargs) as conn:
            conn.cursor().execute(f"CREATE DATABASE IF NOT EXISTS {DATABASE}")
            conn.cursor().execute(f"CREATE SCHEMA IF NOT EXISTS {DATABASE}.{SCHEMA}")
        yield kwargs


@pytest.fixture(scope="module")
def private_key() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem.decode()


def _rows(warehouse: dict[str, Any], table: str) -> list[tuple[Any, ...]]:
    with snowflake.connector.connect(**warehouse, database=DATABASE, schema=SCHEMA) as conn:
        cursor = conn.cursor()
        cursor.execute(f"USE SCHEMA {DATABASE}.{SCHEMA}")
        try:
            sql = f"SELECT message_id FROM {table}"  # noqa: S608 - our own table name
            return list(cursor.execute(sql).fetchall())
        except snowflake.connector.ProgrammingError:
            return []  # not created yet


def _call(t: TenantHandle, method: str, path: str, body: Any = None) -> requests.Response:
    return requests.request(
        method,
        t.tg.base + path,
        json=body,
        headers={"authorization": f"Bearer {t.api_key}"},
        timeout=10,
    )


def _snowflake(warehouse: dict[str, Any], key: str, table: str, region: str) -> dict[str, Any]:
    return {
        "kind": "snowflake",
        "snowflake": {
            "account": f"acme-{region}",
            "user": "TIDEGATE",
            "role": "LOADER",
            "warehouse": "LOADING",
            "database": DATABASE,
            "schema": SCHEMA,
            "table": table,
            "region": region,
            "private_key": key,
            "host": warehouse["host"],
            "port": warehouse["port"],
            "protocol": "http",
        },
    }


def test_another_regions_warehouse_needs_consent_and_loses_it_on_withdrawal(
    tidegate: Tidegate, warehouse: dict[str, Any], private_key: str
) -> None:
    t = tidegate.tenant("eu")
    table = f"US_EVENTS_{time.monotonic_ns()}"
    body = _snowflake(warehouse, private_key, table, "us")

    # Without consent: 422 naming the missing consent, nothing created
    refused = _call(t, "POST", "/v1/destinations", body)
    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert "consent" in refused.json()["detail"]
    assert _call(t, "GET", "/v1/destinations").json() == []

    # Consent for the tenant's own region, or with no reference, is refused
    assert _call(t, "PUT", "/v1/transfer-consents/eu", {"reference": "x"}).status_code == 422
    assert _call(t, "PUT", "/v1/transfer-consents/us", {}).status_code == 400
    assert _call(t, "PUT", "/v1/transfer-consents/mars", {"reference": "x"}).status_code == 422

    # With consent recorded, the destination is created and events load into it
    granted = _call(t, "PUT", "/v1/transfer-consents/us", {"reference": "SCC 2021/914 module 1"})
    assert granted.status_code == 200, granted.text
    assert granted.json()["region"] == "us"
    listed = _call(t, "GET", "/v1/transfer-consents").json()
    assert [(c["region"], c["reference"]) for c in listed] == [("us", "SCC 2021/914 module 1")]
    created = _call(t, "POST", "/v1/destinations", body)
    assert created.status_code == 201, created.text
    destination_id = created.json()["id"]
    assert t.track(messageId="before-withdrawal").status_code == 200
    wait_until(lambda: _rows(warehouse, table) == [("before-withdrawal",)], timeout=30)

    # Another tenant sees none of it
    other = tidegate.tenant("eu")
    assert _call(other, "GET", "/v1/transfer-consents").json() == []
    assert _call(other, "DELETE", "/v1/transfer-consents/us").status_code == 404

    # Withdrawal disables the destination; it cannot be re-enabled or re-created
    withdrawn = _call(t, "DELETE", "/v1/transfer-consents/us")
    assert withdrawn.status_code == 200, withdrawn.text
    assert withdrawn.json()["disabled_destinations"] == [destination_id]
    got = _call(t, "GET", f"/v1/destinations/{destination_id}").json()
    assert got["status"] == "disabled" and "consent" in got["disabled_reason"]
    assert t.track(messageId="after-withdrawal").status_code == 200
    reenable = _call(t, "PATCH", f"/v1/destinations/{destination_id}", {"enabled": True})
    assert reenable.status_code == 422, reenable.text
    assert _call(t, "POST", "/v1/destinations", body).status_code == 422
    assert _call(t, "DELETE", "/v1/transfer-consents/us").status_code == 404
    time.sleep(2)  # the loader's flush interval is 1 s: nothing more arrives
    assert _rows(warehouse, table) == [("before-withdrawal",)]

    # The audit log has the grant and the withdrawal
    actions = [r["action"] for r in t.get("/v1/audit", limit=100).json()["data"]]
    assert "transfer_consent.grant" in actions and "transfer_consent.withdraw" in actions


def test_consents_from_the_cli(tidegate: Tidegate) -> None:
    t = tidegate.tenant("eu")
    consent = tidegate.cli(
        "consents", "grant", "--tenant", t.id, "--region", "us", "--reference", "DPA 7.2"
    )
    assert consent["region"] == "us" and consent["recorded_by"].startswith("cli:")
    assert [c["region"] for c in tidegate.cli("consents", "list", "--tenant", t.id)] == ["us"]
    assert tidegate.cli("consents", "withdraw", "--tenant", t.id, "--region", "us") == {
        "region": "us",
        "disabled_destinations": [],
    }
    assert tidegate.cli("consents", "list", "--tenant", t.id) == []
    again = tidegate.cli("consents", "withdraw", "--tenant", t.id, "--region", "us", check=False)
    assert again.returncode == 1 and "no transfer consent" in again.stderr
