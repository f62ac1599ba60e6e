"""Event log backends: the durable, partitioned log between ingest and the router."""

from __future__ import annotations

from urllib.parse import urlsplit

from tidegate.errors import ConfigError
from tidegate.eventlog.base import Batch, EventLog, LogRecord, Record

__all__ = ["Batch", "EventLog", "LogRecord", "Record", "open_event_log"]


def open_event_log(url: str) -> EventLog:
    """Pick the engine from the URL scheme; optional drivers are imported only here."""
    match urlsplit(url).scheme:
        case "sqlite":
            from tidegate.eventlog.sqlite import SqliteEventLog

            return SqliteEventLog.from_url(url)
        case "kafka":
            from tidegate.eventlog.kafka import KafkaEventLog

            return KafkaEventLog.from_url(url)
        case other:
            raise ConfigError(f"TIDEGATE_LOG_URL: unsupported scheme {other!r} (sqlite, kafka)")
