"""Cross-region transfers: a tenant's events load into another region's warehouse only
while the tenant has recorded its consent, through the API or the CLI."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import snowflake.connector

from tests.support import Tidegate, wait_until
from tests.warehouse import DATABASE, SCHEMA, fake_warehouse, private_key_pem


@pytest.fixture(scope="module")
def warehouse() -> Iterator[dict[str, Any]]:
    with fake_warehouse() as kwargs:
        yield kwargs


@pytest.fixture(scope="module")
def private_key() -> str:
    return private_key_pem()


def _rows(warehouse: dict[str, Any], table: str) -> list[tuple[Any, ...]]:
    with snowflake.connector.connect(**warehouse, database=DATABASE, schema=SCHEMA) as conn:
        cursor = conn.cursor()
        cursor.execute(f"USE SCHEMA {DATABASE}.{SCHEMA}")
        try:
            sql = f"SELECT message_id FROM {table}"  # noqa: S608 - our own table name
            return list(cursor.execute(sql).fetchall())
        except snowflake.connector.ProgrammingError:
            return []  # not created yet


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
    refused = t.call("POST", "/v1/destinations", body)
    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert "consent" in refused.json()["detail"]
    assert t.call("GET", "/v1/destinations").json() == []

    # Consent for the tenant's own region, or with no reference, is refused
    assert t.call("PUT", "/v1/transfer-consents/eu", {"reference": "x"}).status_code == 422
    assert t.call("PUT", "/v1/transfer-consents/us", {}).status_code == 400
    assert t.call("PUT", "/v1/transfer-consents/mars", {"reference": "x"}).status_code == 422

    # With consent recorded, the destination is created and events load into it
    granted = t.call("PUT", "/v1/transfer-consents/us", {"reference": "SCC 2021/914 module 1"})
    assert granted.status_code == 200, granted.text
    assert granted.json()["region"] == "us"
    listed = t.call("GET", "/v1/transfer-consents").json()
    assert [(c["region"], c["reference"]) for c in listed] == [("us", "SCC 2021/914 module 1")]
    created = t.call("POST", "/v1/destinations", body)
    assert created.status_code == 201, created.text
    destination_id = created.json()["id"]
    assert t.track(messageId="before-withdrawal").status_code == 200
    wait_until(lambda: _rows(warehouse, table) == [("before-withdrawal",)], timeout=30)

    # Another tenant sees none of it
    other = tidegate.tenant("eu")
    assert other.call("GET", "/v1/transfer-consents").json() == []
    assert other.call("DELETE", "/v1/transfer-consents/us").status_code == 404

    # Withdrawal disables the destination; it cannot be re-enabled or re-created
    withdrawn = t.call("DELETE", "/v1/transfer-consents/us")
    assert withdrawn.status_code == 200, withdrawn.text
    assert withdrawn.json()["disabled_destinations"] == [destination_id]
    got = t.call("GET", f"/v1/destinations/{destination_id}").json()
    assert got["status"] == "disabled" and "consent" in got["disabled_reason"]
    assert t.track(messageId="after-withdrawal").status_code == 200
    reenable = t.call("PATCH", f"/v1/destinations/{destination_id}", {"enabled": True})
    assert reenable.status_code == 422, reenable.text
    assert t.call("POST", "/v1/destinations", body).status_code == 422
    assert t.call("DELETE", "/v1/transfer-consents/us").status_code == 404
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
