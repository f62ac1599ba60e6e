"""The production store on PostgreSQL: one module per aggregate, sharing one pool."""

from tidegate.store.postgres.store import PostgresStore

__all__ = ["PostgresStore"]
