"""Deliveries on SQLite: claims and leases, attempts, reads, dead letters and replays."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from tidegate.embedded import EmbeddedDatabase
from tidegate.ids import new_delivery_id
from tidegate.model import (
    Attempt,
    Delivery,
    DeliveryId,
    DeliveryStatus,
    DestinationId,
    EventId,
    TenantId,
)
from tidegate.store.base import AttemptResult, DeliveryQuery
from tidegate.store.rows import (
    DELIVERY_COLUMNS,
    NEW_DELIVERY_COLUMNS,
    attempt_row,
    delivery_row,
    new_delivery_values,
)
from tidegate.store.sqlite.database import execute_rows, placeholders

_UPDATE_ATTEMPTED = (
    "UPDATE deliveries SET status = ?, attempts = attempts + 1, next_attempt_at_ms = ?,"
    " lease_until_ms = NULL, updated_at_ms = ?, last_error = ? WHERE id = ? AND tenant_id = ?"
)


class SqliteDeliveryStore:
    """Implements DeliveryStore on the embedded database."""

    def __init__(self, db: EmbeddedDatabase) -> None:
        self._db = db

    async def claim_due(
        self,
        *,
        now_ms: int,
        lease_ms: int,
        limit: int,
        exclude: Sequence[DestinationId] = (),
    ) -> list[Delivery]:
        excluded = f" AND destination_id NOT IN ({placeholders(len(exclude))})" if exclude else ""

        def claim(c: sqlite3.Connection) -> list[Delivery]:
            rows = c.execute(
                f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE status = 'pending'"
                " AND next_attempt_at_ms <= ? AND (lease_until_ms IS NULL OR lease_until_ms < ?)"
                f"{excluded} ORDER BY next_attempt_at_ms LIMIT ?",
                (now_ms, now_ms, *exclude, limit),
            ).fetchall()
            execute_rows(
                c,
                "UPDATE deliveries SET lease_until_ms = ? WHERE id IN (VALUES {values})",
                [(r[0],) for r in rows],
                first=(now_ms + lease_ms,),
            )
            return [delivery_row(r) for r in rows]

        return await self._db.write(claim)

    async def next_due_ms(self, exclude: Sequence[DestinationId] = ()) -> int | None:
        """When the earliest pending delivery falls due (the scheduler's alarm)."""
        excluded = f" AND destination_id NOT IN ({placeholders(len(exclude))})" if exclude else ""
        row = await self._db.read(
            lambda c: c.execute(
                "SELECT MIN(MAX(next_attempt_at_ms, COALESCE(lease_until_ms, 0)))"
                f" FROM deliveries WHERE status = 'pending'{excluded}",
                tuple(exclude),
            ).fetchone()
        )
        return int(row[0]) if row and row[0] is not None else None

    async def record_attempts(self, results: Sequence[AttemptResult], *, now_ms: int) -> None:
        """Multi-row statements, not a statement per row: each statement releases and
        takes back the GIL, and the writer thread waits for it behind the event loop's."""

        def record(c: sqlite3.Connection) -> None:
            execute_rows(
                c,
                "INSERT INTO attempts (id, delivery_id, tenant_id, started_at_ms, duration_ms,"
                " outcome, status_code, error) VALUES {values}",
                [
                    (
                        r.attempt.id,
                        r.attempt.delivery_id,
                        r.attempt.tenant_id,
                        r.attempt.started_at_ms,
                        r.attempt.duration_ms,
                        r.attempt.outcome.value,
                        r.attempt.status_code,
                        r.attempt.error,
                    )
                    for r in results
                ],
            )
            updates = [
                (
                    r.attempt.delivery_id,
                    r.attempt.tenant_id,
                    r.delivery_status,
                    r.next_attempt_at_ms,
                    r.last_error,
                )
                for r in results
            ]
            if len({u[0] for u in updates}) < len(updates):
                # One delivery twice: each attempt counts (a join would apply one of them).
                c.executemany(
                    _UPDATE_ATTEMPTED, [(u[2], u[3], now_ms, u[4], u[0], u[1]) for u in updates]
                )
                return
            execute_rows(
                c,
                "UPDATE deliveries SET status = v.column3, attempts = attempts + 1,"
                " next_attempt_at_ms = v.column4, lease_until_ms = NULL, updated_at_ms = ?,"
                " last_error = v.column5 FROM (VALUES {values}) AS v"
                " WHERE deliveries.id = v.column1 AND deliveries.tenant_id = v.column2",
                updates,
                first=(now_ms,),
            )

        await self._db.write(record)

    async def defer(self, delivery_ids: Sequence[DeliveryId], until_ms: int) -> None:
        def defer(c: sqlite3.Connection) -> None:
            execute_rows(
                c,
                "UPDATE deliveries SET next_attempt_at_ms = ?, lease_until_ms = NULL"
                " WHERE id IN (VALUES {values}) AND status = 'pending'",
                [(d,) for d in delivery_ids],
                first=(until_ms,),
            )

        await self._db.write(defer)

    async def release_leases(self, delivery_ids: Sequence[DeliveryId]) -> None:
        await self._db.write(
            lambda c: execute_rows(
                c,
                "UPDATE deliveries SET lease_until_ms = NULL WHERE id IN (VALUES {values})",
                [(d,) for d in delivery_ids],
            )
        )

    async def resume_destination(
        self, tenant_id: TenantId, destination_id: DestinationId, *, now_ms: int
    ) -> int:
        return await self._db.write(
            lambda c: (
                c.execute(
                    "UPDATE deliveries SET next_attempt_at_ms = ? WHERE tenant_id = ?"
                    " AND destination_id = ? AND status = 'pending' AND next_attempt_at_ms > ?",
                    (now_ms, tenant_id, destination_id, now_ms),
                ).rowcount
            )
        )

    async def release_all_leases(self) -> int:
        return await self._db.write(
            lambda c: (
                c.execute(
                    "UPDATE deliveries SET lease_until_ms = NULL"
                    " WHERE status = 'pending' AND lease_until_ms IS NOT NULL"
                ).rowcount
            )
        )

    async def get_delivery(self, tenant_id: TenantId, delivery_id: DeliveryId) -> Delivery | None:
        row = await self._db.read(
            lambda c: c.execute(
                f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE tenant_id = ? AND id = ?",
                (tenant_id, delivery_id),
            ).fetchone()
        )
        return delivery_row(row) if row else None

    async def list_deliveries(self, tenant_id: TenantId, query: DeliveryQuery) -> list[Delivery]:
        where = ["tenant_id = ?"]
        args: list[Any] = [tenant_id]
        for column, value in (
            ("event_id", query.event_id),
            ("destination_id", query.destination_id),
            ("status", query.status),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if query.after_id is not None:
            where.append("id < ?")
            args.append(query.after_id)
        sql = (
            f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE {' AND '.join(where)}"
            " ORDER BY id DESC LIMIT ?"
        )
        rows = await self._db.read(lambda c: c.execute(sql, [*args, query.limit]).fetchall())
        return [delivery_row(r) for r in rows]

    async def list_attempts(
        self, tenant_id: TenantId, delivery_ids: Sequence[DeliveryId]
    ) -> list[Attempt]:
        ids = list(dict.fromkeys(delivery_ids))
        if not ids:
            return []
        rows = await self._db.read(
            lambda c: c.execute(
                "SELECT id, delivery_id, tenant_id, started_at_ms, duration_ms, outcome,"
                " status_code, error FROM attempts"
                f" WHERE tenant_id = ? AND delivery_id IN ({placeholders(len(ids))}) ORDER BY id",
                [tenant_id, *ids],
            ).fetchall()
        )
        return [attempt_row(r) for r in rows]

    async def dead_letter_pending(
        self, tenant_id: TenantId, destination_id: DestinationId, reason: str, *, now_ms: int
    ) -> int:
        return await self._db.write(
            lambda c: (
                c.execute(
                    "UPDATE deliveries SET status = 'dead', next_attempt_at_ms = NULL,"
                    " lease_until_ms = NULL, last_error = ?, updated_at_ms = ?"
                    " WHERE tenant_id = ? AND destination_id = ? AND status = 'pending'",
                    (reason, now_ms, tenant_id, destination_id),
                ).rowcount
            )
        )

    async def replay_dead_letters(
        self, tenant_id: TenantId, destination_id: DestinationId, *, now_ms: int
    ) -> int:
        return await self._db.write(
            lambda c: (
                c.execute(
                    "UPDATE deliveries SET status = 'pending', next_attempt_at_ms = ?,"
                    " lease_until_ms = NULL, attempts = 0, updated_at_ms = ?"
                    " WHERE tenant_id = ? AND destination_id = ? AND status = 'dead'",
                    (now_ms, now_ms, tenant_id, destination_id),
                ).rowcount
            )
        )

    async def replay_events(
        self,
        tenant_id: TenantId,
        *,
        event_ids: Sequence[EventId] | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        destination_ids: Sequence[DestinationId],
        now_ms: int,
    ) -> int:
        where = ["tenant_id = ?"]
        args: list[Any] = [tenant_id]
        if event_ids is not None:
            where.append(f"id IN ({placeholders(len(event_ids))})")
            args.extend(event_ids)
        if since_ms is not None:
            where.append("received_at_ms >= ?")
            args.append(since_ms)
        if until_ms is not None:
            where.append("received_at_ms < ?")
            args.append(until_ms)

        def replay(c: sqlite3.Connection) -> int:
            ids = [
                r[0]
                for r in c.execute(
                    f"SELECT id FROM events WHERE {' AND '.join(where)} ORDER BY id", args
                )
            ]
            count = 0
            for event_id in ids:
                for destination_id in destination_ids:
                    insert_delivery(
                        c,
                        Delivery(
                            id=new_delivery_id(),
                            tenant_id=tenant_id,
                            event_id=EventId(event_id),
                            destination_id=destination_id,
                            status=DeliveryStatus.PENDING,
                            attempts=0,
                            next_attempt_at_ms=now_ms,
                            created_at_ms=now_ms,
                            updated_at_ms=now_ms,
                            replay_of=None,
                        ),
                        lease_until_ms=None,
                    )
                    count += 1
            return count

        return await self._db.write(replay)


def insert_delivery(c: sqlite3.Connection, d: Delivery, *, lease_until_ms: int | None) -> None:
    insert_deliveries(c, [d], lease_until_ms=lease_until_ms)


def insert_deliveries(
    c: sqlite3.Connection, deliveries: Sequence[Delivery], *, lease_until_ms: int | None
) -> None:
    """Insert new deliveries, up to a few hundred rows per statement."""
    execute_rows(
        c,
        f"INSERT INTO deliveries ({NEW_DELIVERY_COLUMNS}) VALUES {{values}}",
        [new_delivery_values(d, lease_until_ms) for d in deliveries],
    )
