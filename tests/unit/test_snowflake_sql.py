"""The Snowflake loader's SQL and rows: pure functions, no warehouse."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from tidegate.destinations.base import WarehouseRow
from tidegate.destinations.snowflake import (
    check_config,
    copy_sql,
    create_staging_sql,
    create_target_sql,
    encode_batch,
    merge_sql,
    private_key_der,
    put_sql,
)
from tidegate.errors import ValidationFailed
from tidegate.model import (
    Delivery,
    DeliveryId,
    DeliveryStatus,
    DestinationId,
    EventBody,
    EventId,
    SnowflakeConfig,
    TenantId,
)
from tidegate.pipeline.deliver import Loaded, warehouse_row

CONFIG = SnowflakeConfig(
    account="myorg-acct", user="LOADER", role="R", warehouse="WH", database="DB",
    schema="RAW", table="EVENTS", region="eu",
)  # fmt: skip


def test_target_table_is_keyed_by_event_id_with_a_variant_payload() -> None:
    sql = create_target_sql(CONFIG)
    assert sql.startswith("CREATE TABLE IF NOT EXISTS EVENTS (event_id STRING PRIMARY KEY")
    assert "payload VARIANT" in sql and "received_at TIMESTAMP_TZ" in sql


def test_staging_is_a_temporary_table_loaded_from_its_own_stage() -> None:
    assert "TEMPORARY TABLE IF NOT EXISTS EVENTS_TIDEGATE_STAGING" in create_staging_sql(CONFIG)
    assert copy_sql(CONFIG, "batch-1.ndjson") == (
        "COPY INTO EVENTS_TIDEGATE_STAGING FROM @%EVENTS_TIDEGATE_STAGING/batch-1.ndjson"
        " FILE_FORMAT=(TYPE=JSON) PURGE=TRUE"
    )


def test_put_names_the_batch_file_and_the_table_stage(tmp_path: Path) -> None:
    path = tmp_path / "batch-1.ndjson"
    assert put_sql(CONFIG, path) == (
        f"PUT 'file://{path}' @%EVENTS_TIDEGATE_STAGING AUTO_COMPRESS=FALSE"
    )


def test_merge_inserts_only_unseen_event_ids_once_each() -> None:
    sql = merge_sql(CONFIG)
    assert sql.startswith("MERGE INTO EVENTS AS target USING (SELECT ")
    assert "ON target.event_id = src.event_id WHEN NOT MATCHED THEN INSERT" in sql
    assert "WHEN MATCHED" not in sql
    assert "QUALIFY ROW_NUMBER() OVER (PARTITION BY record:event_id::string" in sql
    assert "CURRENT_TIMESTAMP()" in sql and "record:payload AS payload" in sql


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("table", "EVENTS; DROP TABLE X"),
        ("schema", "RAW.EVIL"),
        ("database", "1DB"),
        ("role", ""),
        ("account", "acct/../x"),
        ("protocol", "ftp"),
    ],
)
def test_a_name_that_is_not_a_plain_identifier_is_refused(field: str, value: str) -> None:
    with pytest.raises(ValidationFailed):
        check_config(msgspec.structs.replace(CONFIG, **{field: value}))


def test_a_private_key_that_is_not_pem_is_refused() -> None:
    with pytest.raises(ValidationFailed):
        private_key_der("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")


def _delivery() -> Delivery:
    return Delivery(
        id=DeliveryId("d1"), tenant_id=TenantId("t1"), event_id=EventId("e1"),
        destination_id=DestinationId("x"), status=DeliveryStatus.PENDING, attempts=0,
        next_attempt_at_ms=None, created_at_ms=0, updated_at_ms=0,
    )  # fmt: skip


def test_a_row_reads_columns_from_the_rendered_document() -> None:
    """Columns come from the document after the transform: a dropped userId is not loaded."""
    loaded = Loaded(
        body=EventBody(name="Order Completed", message_id="m1", payload=b"{}"),
        kind="segment",
        received_at_ms=1_700_000_000_123,
    )
    content = b'{"type":"track","anonymousId":"a1","sentAt":"2024-05-01T10:00:00+02:00"}'
    row = warehouse_row(_delivery(), loaded, content)
    assert (row.event_id, row.tenant_id, row.type) == ("e1", "t1", "track")
    assert (row.event_name, row.message_id) == ("Order Completed", "m1")
    assert row.user_id is None and row.anonymous_id == "a1"
    assert row.sent_at == "2024-05-01T08:00:00.000+00:00"
    assert row.received_at == "2023-11-14T22:13:20.123+00:00"


def test_a_malformed_client_time_becomes_null_rather_than_failing_the_batch() -> None:
    loaded = Loaded(
        body=EventBody(name=None, message_id="m", payload=b"{}"), kind="cloudevents",
        received_at_ms=0,
    )  # fmt: skip
    row = warehouse_row(_delivery(), loaded, b'{"sentAt":"yesterday"}')
    assert row.sent_at is None and row.type == "cloudevents"


def test_a_batch_is_ndjson_with_the_payload_embedded_as_json() -> None:
    row = WarehouseRow(
        event_id=EventId("e1"), tenant_id=TenantId("t"), type="track", event_name=None,
        user_id="u", anonymous_id=None, message_id="m", sent_at=None,
        received_at="2024-01-01T00:00:00.000+00:00", payload=msgspec.Raw(b'{"a":1}'),
    )  # fmt: skip
    lines = encode_batch([row, row]).splitlines()
    assert len(lines) == 2
    assert msgspec.json.decode(lines[0])["payload"] == {"a": 1}
