"""Logging (structlog, JSON off a TTY) and Prometheus metrics.

Logs never carry payloads, tokens or secrets: `redact` drops known keys from every
log line whatever the call site passes.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, values
from prometheus_client.multiprocess import MultiProcessCollector

SECRET_KEYS = frozenset(
    {
        "authorization",
        "write_key",
        "writekey",
        "writeKey",
        "secret",
        "password",
        "token",
        "api_key",
        "payload",
        "body",
        "data",
        "properties",
        "traits",
        "context",
    }
)


def metrics_registry() -> CollectorRegistry:
    """What /metrics shows: this process's metrics, or, under `serve --processes N`
    (PROMETHEUS_MULTIPROC_DIR set), the sum over every process of the server, whichever
    one answers the scrape."""
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


def _pid_without_syscalls() -> None:
    """Under PROMETHEUS_MULTIPROC_DIR each metric update checks the pid, to start its own
    files after a fork: a getpid(2) per counter increment, two per histogram observation
    (about eight per delivery). The pid is kept here and refreshed in a forked child,
    which is the same check without the syscall."""
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return
    pid = [os.getpid()]
    os.register_at_fork(after_in_child=lambda: pid.__setitem__(0, os.getpid()))
    values.ValueClass = values.MultiProcessValue(process_identifier=lambda: pid[0])  # type: ignore[no-untyped-call]


_pid_without_syscalls()  # before the first metric below is made

INGESTED = Counter("tidegate_events_ingested_total", "Events durably accepted", ["kind"])
ROUTED = Counter(
    "tidegate_events_routed_total",
    "Events the router has recorded in the store, duplicates included: the router's lag"
    " is tidegate_events_ingested_total minus this",
)
REJECTED = Counter("tidegate_requests_rejected_total", "Ingest requests refused", ["code"])
ATTEMPTS = Counter("tidegate_delivery_attempts_total", "Delivery attempts", ["outcome"])
DEAD_LETTERS = Counter("tidegate_dead_letters_total", "Deliveries that exhausted the schedule")
SPILLED = Counter(
    "tidegate_deliveries_spilled_total",
    "Deliveries handed back to the store because their destination's lane was full (or"
    " was being refilled from the store): they are sent from there, oldest first",
)
LANE_CUTS = Counter(
    "tidegate_destination_concurrency_cuts_total",
    "Times a webhook destination's in-flight limit was halved, on a 429, a 5xx, a timeout"
    " or a connection error",
)
LATENCY = Histogram(
    "tidegate_ingest_to_attempt_seconds",
    "From receivedAt to the start of the first delivery attempt",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
ATTEMPT_DURATION = Histogram(
    "tidegate_attempt_duration_seconds",
    "Duration of one webhook attempt",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15),
)

# Warehouse metrics are per destination: a tenant's Snowflake destinations are few, and
# "is my table fresh, and is anything being refused" is asked of one destination.
WAREHOUSE_ROWS = Counter(
    "tidegate_warehouse_rows_loaded_total",
    "Rows committed by warehouse loads",
    ["destination_id"],
)
WAREHOUSE_BATCHES = Counter(
    "tidegate_warehouse_batches_total",
    "Warehouse load batches, by result: loaded (in one load), isolated (rows the warehouse"
    " refused were split out, the rest loaded), failed (every unloaded row retries)",
    ["destination_id", "result"],
)
WAREHOUSE_FAILURES = Counter(
    "tidegate_warehouse_row_failures_total",
    "Rows whose warehouse load failed (warehouse unreachable, refused login...): retried",
    ["destination_id"],
)
WAREHOUSE_REJECTED = Counter(
    "tidegate_warehouse_rows_rejected_total",
    "Rows the warehouse refused (or would refuse for sure): dead letters at once",
    ["destination_id"],
)
WAREHOUSE_FRESHNESS = Histogram(
    "tidegate_warehouse_freshness_seconds",
    "From receivedAt to the row's batch being committed in the warehouse",
    ["destination_id"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600),
)


def redact(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        if key in SECRET_KEYS:
            event_dict[key] = "[REDACTED]"
    return event_dict


def configure_logging(fmt: str = "auto", level: str = "info") -> None:
    """Our structlog lines, and the standard-library records of the libraries we use
    (librdkafka, psycopg's pool, the Snowflake connector; warnings and above) rendered
    the same way, on stdout, redacted alike."""
    json_output = fmt == "json" or (fmt == "auto" and not sys.stdout.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer() if json_output else structlog.dev.ConsoleRenderer()
    )
    shared: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
    ]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *shared,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
