"""Snowflake loading: micro-batches of rows, merged idempotently on the event id.

Each batch goes through the table stage of a session-scoped staging table: the rows
are written as NDJSON to a temp file, PUT to the stage, COPY'd into the staging table
(one VARIANT column, the file purged from the stage), then MERGEd into the target
WHEN NOT MATCHED on `event_id`, and the staging table is truncated. A batch loaded
twice (a retry after a lost answer, a replay) therefore adds no row. The staging
table is TEMPORARY, so concurrent workers loading one table never see each other's
files.

snowflake-connector-python is blocking: one worker thread per batch, and batches of
one destination run one after another on one connection. The connector is an
optional extra, imported only when a loader first connects.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import structlog
from cryptography.hazmat.primitives import serialization

from tidegate import telemetry
from tidegate.destinations.base import Outcome, WarehouseRow
from tidegate.errors import ValidationFailed
from tidegate.ids import new_attempt_id
from tidegate.model import SnowflakeConfig

log = structlog.get_logger(__name__)

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,254}")
_ACCOUNT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}")
_encode_row = msgspec.json.Encoder().encode

TARGET_COLUMNS = (
    "event_id", "tenant_id", "type", "event_name", "user_id", "anonymous_id", "message_id",
    "sent_at", "received_at", "loaded_at", "payload",
)  # fmt: skip
# Every target column but loaded_at, which the MERGE stamps, comes from the row's JSON.
_STRING_FIELDS = (
    "event_id",
    "tenant_id",
    "type",
    "event_name",
    "user_id",
    "anonymous_id",
    "message_id",
)
_TIME_FIELDS = ("sent_at", "received_at")


def check_config(config: SnowflakeConfig) -> None:
    """Refuse a config the loader could not use safely (ValidationFailed, 422).

    Names are interpolated into SQL, so they must be plain unquoted identifiers.
    """
    if not _ACCOUNT.fullmatch(config.account):
        raise ValidationFailed("snowflake.account must be an account identifier")
    if not config.user.strip() or len(config.user) > 255:
        raise ValidationFailed("snowflake.user must be 1-255 characters")
    for field in ("role", "warehouse", "database", "schema", "table"):
        if not _IDENTIFIER.fullmatch(getattr(config, field)):
            raise ValidationFailed(
                f"snowflake.{field} must be an unquoted identifier (letters, digits, _ and $,"
                " not starting with a digit)"
            )
    if config.protocol not in (None, "https", "http"):
        raise ValidationFailed("snowflake.protocol must be https or http")
    if config.port is not None and not 0 < config.port < 65536:
        raise ValidationFailed("snowflake.port must be between 1 and 65535")


def private_key_der(pem: str) -> bytes:
    """The PKCS#8 DER form the connector takes, from an unencrypted PEM private key."""
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise ValidationFailed(
            "snowflake private key must be an unencrypted PEM private key"
        ) from exc
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def staging_table(config: SnowflakeConfig) -> str:
    return f"{config.table}_TIDEGATE_STAGING"


def create_target_sql(config: SnowflakeConfig) -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS {config.table} (event_id STRING PRIMARY KEY,"
        " tenant_id STRING, type STRING, event_name STRING, user_id STRING,"
        " anonymous_id STRING, message_id STRING, sent_at TIMESTAMP_TZ,"
        " received_at TIMESTAMP_TZ, loaded_at TIMESTAMP_TZ, payload VARIANT)"
    )


def create_staging_sql(config: SnowflakeConfig) -> str:
    return f"CREATE TEMPORARY TABLE IF NOT EXISTS {staging_table(config)} (record VARIANT)"


def put_sql(config: SnowflakeConfig, path: Path) -> str:
    # The file name is unique per batch: COPY's load history skips a name it has loaded.
    return f"PUT 'file://{path.as_posix()}' @%{staging_table(config)} AUTO_COMPRESS=FALSE"


def copy_sql(config: SnowflakeConfig) -> str:
    staging = staging_table(config)
    return f"COPY INTO {staging} FROM @%{staging} FILE_FORMAT=(TYPE=JSON) PURGE=TRUE"


def merge_sql(config: SnowflakeConfig) -> str:
    """Insert each staged event whose id the target lacks; a batch holding one event
    twice (a replay beside its original) inserts it once."""
    selected = [f"record:{f}::string AS {f}" for f in _STRING_FIELDS]
    selected += [f"record:{f}::string::timestamp_tz AS {f}" for f in _TIME_FIELDS]
    selected.append("record:payload AS payload")
    values = ["CURRENT_TIMESTAMP()" if c == "loaded_at" else f"src.{c}" for c in TARGET_COLUMNS]
    return (
        f"MERGE INTO {config.table} AS target USING (SELECT {', '.join(selected)}"
        f" FROM {staging_table(config)}"
        " QUALIFY ROW_NUMBER() OVER (PARTITION BY record:event_id::string ORDER BY 1) = 1)"
        " AS src ON target.event_id = src.event_id"
        f" WHEN NOT MATCHED THEN INSERT ({', '.join(TARGET_COLUMNS)})"
        f" VALUES ({', '.join(values)})"
    )


def truncate_sql(config: SnowflakeConfig) -> str:
    return f"TRUNCATE TABLE {staging_table(config)}"


def encode_batch(rows: list[WarehouseRow]) -> bytes:
    """The batch as NDJSON, one row per line."""
    return b"\n".join(_encode_row(row) for row in rows) + b"\n"


class SnowflakeLoader:
    """Batches rows for one destination: flush at `batch_rows` rows or `flush_interval_s`
    after the first row of a batch arrived, whichever comes first."""

    def __init__(
        self,
        config: SnowflakeConfig,
        private_key_pem: str,
        *,
        batch_rows: int = 500,
        flush_interval_s: float = 1.0,
        timeout_s: float = 30.0,
    ) -> None:
        self._config = config
        self._key = private_key_der(private_key_pem)
        self._batch_rows = batch_rows
        self._flush_interval_s = flush_interval_s
        self._timeout_s = timeout_s
        self._pending: list[tuple[WarehouseRow, asyncio.Future[Outcome]]] = []
        self._arrived = asyncio.Event()
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._conn: Any = None  # a snowflake.connector connection, made on first use

    async def load(self, row: WarehouseRow) -> Outcome:
        if self._closing:
            return Outcome(error="snowflake loader closing")
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._pending.append((row, future))
        self._arrived.set()
        if len(self._pending) >= self._batch_rows:
            self._full.set()
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        # Shielded: a delivery cancelled at shutdown must not cancel its batch-mates' load.
        return await asyncio.shield(future)

    async def _run(self) -> None:
        while True:
            await self._arrived.wait()
            if not self._closing:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self._flush_interval_s)
            batch = self._pending[: self._batch_rows]
            self._pending = self._pending[self._batch_rows :]
            self._full.clear()
            if len(self._pending) >= self._batch_rows:
                self._full.set()
            if not self._pending:
                self._arrived.clear()
            if batch:
                await self._flush(batch)
            if self._closing and not self._pending:
                return

    async def _flush(self, batch: list[tuple[WarehouseRow, asyncio.Future[Outcome]]]) -> None:
        rows = [row for row, _ in batch]
        started = time.perf_counter()
        try:
            await asyncio.to_thread(self._load_batch, rows)
        except Exception as exc:  # noqa: BLE001 - any failure fails the batch; it is retried
            duration_ms = (time.perf_counter() - started) * 1000
            telemetry.WAREHOUSE_BATCHES.labels("failed").inc()
            telemetry.WAREHOUSE_FAILURES.inc(len(rows))
            log.warning(
                "snowflake.batch_failed",
                account=self._config.account,
                table=self._config.table,
                rows=len(rows),
                error=_describe(exc),
            )
            outcome = Outcome(error=_describe(exc), duration_ms=duration_ms)
            await asyncio.to_thread(self._disconnect)
        else:
            duration_ms = (time.perf_counter() - started) * 1000
            telemetry.WAREHOUSE_BATCHES.labels("loaded").inc()
            telemetry.WAREHOUSE_ROWS.inc(len(rows))
            log.info(
                "snowflake.batch_loaded",
                account=self._config.account,
                table=self._config.table,
                rows=len(rows),
                duration_ms=round(duration_ms, 3),
            )
            outcome = Outcome(loaded=True, duration_ms=duration_ms)
        for _, future in batch:
            if not future.done():
                future.set_result(outcome)

    def _load_batch(self, rows: list[WarehouseRow]) -> None:
        """PUT, COPY, MERGE, clean up: runs in a worker thread."""
        cursor = self._connection().cursor()
        try:
            cursor.execute(create_target_sql(self._config))
            cursor.execute(create_staging_sql(self._config))
            # What a batch that failed half-way left behind must not join this one.
            cursor.execute(truncate_sql(self._config))
            with tempfile.TemporaryDirectory(prefix="tidegate-snowflake-") as folder:
                path = Path(folder) / f"batch-{new_attempt_id()}.ndjson"
                path.write_bytes(encode_batch(rows))
                cursor.execute(put_sql(self._config, path))
            cursor.execute(copy_sql(self._config))
            cursor.execute(merge_sql(self._config))
            cursor.execute(truncate_sql(self._config))
        finally:
            cursor.close()

    def _connection(self) -> Any:
        if self._conn is None:
            import snowflake.connector

            c = self._config
            overrides = {
                k: v
                for k, v in (("host", c.host), ("port", c.port), ("protocol", c.protocol))
                if v is not None
            }
            self._conn = snowflake.connector.connect(
                account=c.account,
                user=c.user,
                private_key=self._key,
                role=c.role,
                warehouse=c.warehouse,
                database=c.database,
                schema=c.schema,
                login_timeout=self._timeout_s,
                network_timeout=self._timeout_s,
                application="Tidegate",
                **overrides,
            )
            self._conn.cursor().execute(f"USE SCHEMA {c.database}.{c.schema}")
        return self._conn

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    async def aclose(self) -> None:
        self._closing = True
        self._arrived.set()
        self._full.set()
        if self._task is not None:
            await self._task
        await asyncio.to_thread(self._disconnect)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"snowflake: {type(exc).__name__}: {text}"[:300]
