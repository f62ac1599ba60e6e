"""Snowflake loading: micro-batches of rows, merged idempotently on the event id.

Each batch goes through the table stage of a session-scoped staging table: the rows
are written as NDJSON to a uniquely named file, PUT to the stage, COPY'd into the
staging table (one VARIANT column; that file only, purged from the stage once
loaded), then MERGEd into the target WHEN NOT MATCHED on `event_id`. A batch loaded
twice (a retry after a lost answer, a replay) therefore adds no row. The staging table
is TEMPORARY, so concurrent workers loading one table never see each other's files.

A row Snowflake refuses (a value its column cannot take) fails the whole COPY or MERGE.
The loader then finds it by bisection: each refused range is split in two and each
half loaded again, down to single rows, so every other row of the batch lands and each
refused row gets Snowflake's reason (a dead letter; see `is_row_refusal` for what
counts as a refusal). Any other failure fails the rows not yet loaded, which retry.

snowflake-connector-python is blocking: one worker thread per batch, and batches of
one destination run one after another on one connection. The connector is an
optional extra, imported only when a loader first connects (or classifies an error
the connector raised).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import tempfile
import time
from collections.abc import Callable
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
# Snowflake's largest VARIANT value (16 MB). Each row is staged as one VARIANT, so a
# row whose JSON is larger is refused for sure: it is turned away before loading.
MAX_ROW_BYTES = 16 * 1024 * 1024
# How long a batch may spend isolating refused rows (about 2·k·log2(n) loads for k
# refused rows among n) before what is unresolved retries: well inside a delivery's
# lease, so no other worker takes these deliveries meanwhile.
ISOLATION_BUDGET_S = 20.0
# Snowflake's errno range for stage and file errors (091003 "failure using stage area",
# 091016 "remote file not found"). Some carry SQLSTATE 22000, but no row is at fault.
_STAGE_ERRNOS = range(90_000, 100_000)
_QUOTED = re.compile(r"'(?:[^']|'')*'")


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


def copy_sql(config: SnowflakeConfig, file_name: str) -> str:
    """COPY one staged file. A file whose COPY was refused stays in the stage (PURGE
    removes only what loaded), so naming the file keeps it out of later loads."""
    staging = staging_table(config)
    return f"COPY INTO {staging} FROM @%{staging}/{file_name} FILE_FORMAT=(TYPE=JSON) PURGE=TRUE"


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


def refusal_before_load(row: WarehouseRow) -> str | None:
    """Why Snowflake would refuse `row` for sure (None: it may load). Such a row is not
    sent: it would only fail its batch and cost a bisection."""
    size = len(_encode_row(row))
    if size > MAX_ROW_BYTES:
        return (
            f"snowflake would refuse the row: {size} bytes of JSON, over the"
            f" {MAX_ROW_BYTES}-byte (16 MB) limit of a VARIANT value"
        )
    return None


def is_row_refusal(exc: BaseException) -> bool:
    """Whether a failed COPY or MERGE means Snowflake refused the data (some row of the
    load is at fault), rather than that loading could not happen at all.

    The connector raises ProgrammingError (or its DataError/IntegrityError siblings)
    for a statement Snowflake ran and refused. Among those, SQLSTATE class 22 (data
    exception: 100035 timestamp not recognized 22007, 100038 numeric value not
    recognized 22018, 100069 error parsing JSON, 100078 string too long, 100072 NULL in
    a non-nullable column) and class 23 (integrity) are the rows' fault, except stage
    errors (errno 09xxxx). Everything else is not a row's fault and retries with
    backoff, nothing lost: OperationalError and DatabaseError (network, login, JWT
    refused, HTTP 5xx), ProgrammingError of class 42 (missing table, no privilege,
    syntax), 57 (statement cancelled, warehouse timeout), 08 (connection), OSError.
    """
    from snowflake.connector import errors

    if not isinstance(exc, errors.ProgrammingError | errors.DataError | errors.IntegrityError):
        return False
    sqlstate = exc.sqlstate or ""
    return sqlstate[:2] in ("22", "23") and exc.errno not in _STAGE_ERRNOS


def refusal_reason(exc: BaseException) -> str:
    """Snowflake's message for a refused row, quoted values masked: the event is
    encrypted at rest, a delivery's error is not, and Snowflake quotes the value it
    refused ("Numeric value 'abc' is not recognized")."""
    text = " ".join(str(getattr(exc, "msg", None) or exc).split())
    masked = _QUOTED.sub("'***'", text)
    return f"snowflake refused the row: {masked}"[:500]


class RowsRefused(Exception):
    """Snowflake refused the data of one load (its COPY or MERGE): nothing of it was
    committed, and some row of it is at fault."""


class LoadReport(msgspec.Struct, kw_only=True):
    """What happened to each row (by index) of a batch."""

    loaded: list[int] = []
    refused: dict[int, str] = {}  # index -> reason
    failed: list[int] = []  # not loaded for a reason no row is at fault for: retry
    error: str | None = None  # why `failed` failed
    loads: int = 0


def isolate_refused_rows(
    count: int,
    load: Callable[[int, int], None],
    *,
    budget_s: float,
    clock: Callable[[], float] = time.monotonic,
) -> LoadReport:
    """Load rows [0, count) with `load(lo, hi)`, isolating the rows the warehouse refuses.

    `load` commits rows lo..hi-1 or raises RowsRefused (nothing committed); any other
    exception means the warehouse failed. A refused range is split in two and each half
    loaded, down to single rows; a single row refused is refused for good. The first
    failure that is not a refusal, or running past `budget_s` (checked before each load
    after the first), stops: the rows not yet resolved fail and retry later.
    """
    report = LoadReport()
    deadline = clock() + budget_s
    todo = [(0, count)]
    while todo:
        lo, hi = todo.pop()
        if report.loads and clock() > deadline:
            todo.append((lo, hi))
            report.error = "snowflake: time ran out isolating refused rows; these retry"
            break
        report.loads += 1
        try:
            load(lo, hi)
        except RowsRefused as exc:
            if hi - lo == 1:
                report.refused[lo] = str(exc)
            else:
                mid = (lo + hi) // 2
                todo += [(mid, hi), (lo, mid)]  # the lower half is loaded first
            continue
        except Exception as exc:  # noqa: BLE001 - the warehouse failed, not a row: retry
            todo.append((lo, hi))
            report.error = _describe(exc)
            break
        report.loaded.extend(range(lo, hi))
    report.failed = sorted(i for lo, hi in todo for i in range(lo, hi))  # empty unless stopped
    return report


class SnowflakeLoader:
    """Batches rows for one destination: flush at `batch_rows` rows or `flush_interval_s`
    after the first row of a batch arrived, whichever comes first."""

    def __init__(
        self,
        config: SnowflakeConfig,
        private_key_pem: str,
        *,
        destination_id: str,
        batch_rows: int = 500,
        flush_interval_s: float = 1.0,
        timeout_s: float = 30.0,
        isolation_budget_s: float = ISOLATION_BUDGET_S,
    ) -> None:
        self._config = config
        self._key = private_key_der(private_key_pem)
        self._destination_id = destination_id
        self._batch_rows = batch_rows
        self._flush_interval_s = flush_interval_s
        self._timeout_s = timeout_s
        self._isolation_budget_s = isolation_budget_s
        self._pending: list[tuple[WarehouseRow, asyncio.Future[Outcome]]] = []
        self._arrived = asyncio.Event()
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._conn: Any = None  # a snowflake.connector connection, made on first use

    async def load(self, row: WarehouseRow) -> Outcome:
        if self._closing:
            return Outcome(error="snowflake loader closing")
        refusal = refusal_before_load(row)
        if refusal is not None:
            telemetry.WAREHOUSE_REJECTED.labels(self._destination_id).inc()
            self._log_refused(row, refusal)
            return Outcome(error=refusal, rejected=True)
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
        report = await asyncio.to_thread(self._load_batch, rows)
        duration_ms = (time.perf_counter() - started) * 1000
        outcomes = [Outcome(loaded=True, duration_ms=duration_ms)] * len(rows)
        for i, reason in report.refused.items():
            outcomes[i] = Outcome(error=reason, rejected=True, duration_ms=duration_ms)
            self._log_refused(rows[i], reason)
        failure = Outcome(error=report.error, duration_ms=duration_ms)
        for i in report.failed:
            outcomes[i] = failure
        self._count(report)
        fields = {
            "destination_id": self._destination_id,
            "account": self._config.account,
            "table": self._config.table,
            "rows": len(rows),
            "loaded": len(report.loaded),
            "refused": len(report.refused),
            "loads": report.loads,
            "duration_ms": round(duration_ms, 3),
        }
        if report.failed:
            log.warning(
                "snowflake.batch_failed", failed=len(report.failed), error=report.error, **fields
            )
            await asyncio.to_thread(self._disconnect)
        else:
            log.info("snowflake.batch_loaded", **fields)
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if not future.done():
                future.set_result(outcome)

    def _count(self, report: LoadReport) -> None:
        d = self._destination_id
        result = (
            "failed"
            if report.failed
            else "isolated"
            if report.refused or report.loads > 1
            else "loaded"
        )
        telemetry.WAREHOUSE_BATCHES.labels(d, result).inc()
        telemetry.WAREHOUSE_ROWS.labels(d).inc(len(report.loaded))
        if report.refused:
            telemetry.WAREHOUSE_REJECTED.labels(d).inc(len(report.refused))
        if report.failed:
            telemetry.WAREHOUSE_FAILURES.labels(d).inc(len(report.failed))

    def _log_refused(self, row: WarehouseRow, reason: str) -> None:
        log.warning(
            "snowflake.row_refused",
            destination_id=self._destination_id,
            table=self._config.table,
            event_id=row.event_id,
            error=reason,
        )

    def _load_batch(self, rows: list[WarehouseRow]) -> LoadReport:
        """Load `rows`, isolating those Snowflake refuses: runs in a worker thread."""
        cursor: Any = None

        def load(lo: int, hi: int) -> None:
            nonlocal cursor
            if cursor is None:
                cursor = self._connection().cursor()
                cursor.execute(create_target_sql(self._config))
                cursor.execute(create_staging_sql(self._config))
            self._load_rows(cursor, rows[lo:hi])

        try:
            return isolate_refused_rows(len(rows), load, budget_s=self._isolation_budget_s)
        finally:
            if cursor is not None:
                with contextlib.suppress(Exception):
                    cursor.close()

    def _load_rows(self, cursor: Any, rows: list[WarehouseRow]) -> None:
        """PUT, COPY, MERGE one set of rows; RowsRefused if Snowflake refused their data."""
        # What a load that failed half-way left in the staging table must not join this one.
        cursor.execute(truncate_sql(self._config))
        with tempfile.TemporaryDirectory(prefix="tidegate-snowflake-") as folder:
            path = Path(folder) / f"batch-{new_attempt_id()}.ndjson"
            path.write_bytes(encode_batch(rows))
            cursor.execute(put_sql(self._config, path))
        try:
            cursor.execute(copy_sql(self._config, path.name))
            cursor.execute(merge_sql(self._config))
        except Exception as exc:
            if is_row_refusal(exc):
                raise RowsRefused(refusal_reason(exc)) from exc
            raise

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
