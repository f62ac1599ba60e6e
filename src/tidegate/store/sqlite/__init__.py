"""The embedded store on SQLite: one module per aggregate, sharing one database file."""

from tidegate.store.sqlite.store import SqliteStore

__all__ = ["SqliteStore"]
