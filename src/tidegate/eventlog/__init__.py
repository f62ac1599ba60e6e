"""Event log backends: the durable, partitioned log between ingest and the router."""

from __future__ import annotations

from urllib.parse import urlsplit

from tidegate.errors import ConfigError
from tidegate.eventlog.base import Batch, EventLog, LogRecord, Record

__all__ = ["Batch", "EventLog", "LogRecord", "Record", "open_event_log"]


def open_event_log(url: str, *, partition: int = 0, processes: int = 1) -> EventLog:
    """Pick the engine from the URL scheme; optional drivers are imported only here.

    `partition` and `processes` place this process among `serve --processes N`'s on the
    embedded log (one partition file each); Kafka spreads records by key instead."""
    match urlsplit(url).scheme:
        case "sqlite":
            from tidegate.eventlog.sqlite import SqliteEventLog

            return SqliteEventLog.from_url(url, partition=partition, processes=processes)
        case "kafka":
            from tidegate.eventlog.kafka import KafkaEventLog

            return KafkaEventLog.from_url(url)
        case other:
            raise ConfigError(f"TIDEGATE_LOG_URL: unsupported scheme {other!r} (sqlite, kafka)")
