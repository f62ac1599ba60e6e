"""Store backends: tenants, configuration, the event index, deliveries and usage."""

from __future__ import annotations

from urllib.parse import urlsplit

from tidegate.errors import ConfigError
from tidegate.store.base import (
    AttemptResult,
    DeliveryQuery,
    EventQuery,
    RoutedEvent,
    Store,
    StoredEvent,
    UsageIncrement,
    UsageRow,
)

__all__ = [
    "AttemptResult",
    "DeliveryQuery",
    "EventQuery",
    "RoutedEvent",
    "Store",
    "StoredEvent",
    "UsageIncrement",
    "UsageRow",
    "open_store",
]


def open_store(url: str) -> Store:
    """Pick the engine from the URL scheme; optional drivers are imported only here."""
    match urlsplit(url).scheme:
        case "sqlite":
            from tidegate.store.sqlite import SqliteStore

            return SqliteStore.from_url(url)
        case "postgresql" | "postgres":
            from tidegate.store.postgres import PostgresStore

            return PostgresStore.from_url(url)
        case other:
            raise ConfigError(
                f"TIDEGATE_STORE_URL: unsupported scheme {other!r} (sqlite, postgresql)"
            )
