"""Deliveries on PostgreSQL: claims and leases, attempts, reads, dead letters and replays.

Several workers may share the database: claims use `FOR UPDATE SKIP LOCKED`, so no
two lease the same delivery, and multi-row writes go in key order against deadlocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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
from tidegate.store.postgres.database import Connection, PostgresDatabase, filters, params
from tidegate.store.rows import (
    DELIVERY_COLUMNS,
    NEW_DELIVERY_COLUMNS,
    attempt_row,
    delivery_row,
    new_delivery_values,
)


class PostgresDeliveryStore:
    """Implements DeliveryStore on PostgreSQL."""

    def __init__(self, db: PostgresDatabase) -> None:
        self._db = db

    async def claim_due(
        self,
        *,
        now_ms: int,
        lease_ms: int,
        limit: int,
        exclude: Sequence[DestinationId] = (),
    ) -> list[Delivery]:
        excluded, excluded_args = _excluding(exclude)
        async with self._db.transaction() as conn:
            # SKIP LOCKED: a delivery another worker is claiming right now is its, not ours.
            cur = await conn.execute(
                f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE status = 'pending'"
                " AND next_attempt_at_ms <= %s"
                f" AND (lease_until_ms IS NULL OR lease_until_ms < %s){excluded}"
                " ORDER BY next_attempt_at_ms LIMIT %s FOR UPDATE SKIP LOCKED",
                (now_ms, now_ms, *excluded_args, limit),
            )
            rows = await cur.fetchall()
            if rows:
                await conn.execute(
                    "UPDATE deliveries SET lease_until_ms = %s WHERE id = ANY(%s)",
                    (now_ms + lease_ms, [r[0] for r in rows]),
                )
        return [delivery_row(r) for r in rows]

    async def next_due_ms(self, exclude: Sequence[DestinationId] = ()) -> int | None:
        """When the earliest pending delivery falls due (the scheduler's alarm)."""
        excluded, excluded_args = _excluding(exclude)
        row = await self._db.fetch_one(
            "SELECT MIN(GREATEST(next_attempt_at_ms, COALESCE(lease_until_ms, 0)))"
            f" FROM deliveries WHERE status = 'pending'{excluded}",
            excluded_args,
        )
        return int(row[0]) if row and row[0] is not None else None

    async def record_attempts(self, results: Sequence[AttemptResult], *, now_ms: int) -> None:
        if not results:
            return
        async with self._db.transaction() as conn:
            # A delivery attempted twice in one batch is updated once per round, in order.
            for round_ in _rounds(results):
                ids = [r.attempt.delivery_id for r in round_]
                # Lock in delivery-id order, so two transactions never deadlock.
                await conn.execute(
                    "SELECT 1 FROM deliveries WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
                    (ids,),
                )
                await conn.execute(
                    "INSERT INTO attempts (id, delivery_id, tenant_id, started_at_ms,"
                    " duration_ms, outcome, status_code, error) SELECT * FROM unnest(%s::text[],"
                    " %s::text[], %s::text[], %s::bigint[], %s::float8[], %s::text[],"
                    " %s::int[], %s::text[])",
                    (
                        [r.attempt.id for r in round_],
                        ids,
                        [r.attempt.tenant_id for r in round_],
                        [r.attempt.started_at_ms for r in round_],
                        [r.attempt.duration_ms for r in round_],
                        [r.attempt.outcome.value for r in round_],
                        [r.attempt.status_code for r in round_],
                        [r.attempt.error for r in round_],
                    ),
                )
                await conn.execute(
                    "UPDATE deliveries d SET status = u.status, attempts = d.attempts + 1,"
                    " next_attempt_at_ms = u.next_at, lease_until_ms = NULL,"
                    " updated_at_ms = %s, last_error = u.error"
                    " FROM unnest(%s::text[], %s::text[], %s::text[], %s::bigint[], %s::text[])"
                    " AS u(id, tenant_id, status, next_at, error)"
                    " WHERE d.id = u.id AND d.tenant_id = u.tenant_id",
                    (
                        now_ms,
                        ids,
                        [r.attempt.tenant_id for r in round_],
                        [r.delivery_status for r in round_],
                        [r.next_attempt_at_ms for r in round_],
                        [r.last_error for r in round_],
                    ),
                )

    async def defer(self, delivery_ids: Sequence[DeliveryId], until_ms: int) -> None:
        if delivery_ids:
            await self._db.write(
                "UPDATE deliveries SET next_attempt_at_ms = %s, lease_until_ms = NULL"
                " WHERE id = ANY(%s) AND status = 'pending'",
                (until_ms, sorted(delivery_ids)),
            )

    async def release_leases(self, delivery_ids: Sequence[DeliveryId]) -> None:
        if delivery_ids:
            await self._db.write(
                "UPDATE deliveries SET lease_until_ms = NULL WHERE id = ANY(%s)",
                (sorted(delivery_ids),),
            )

    async def resume_destination(
        self, tenant_id: TenantId, destination_id: DestinationId, *, now_ms: int
    ) -> int:
        return await self._db.write(
            "UPDATE deliveries SET next_attempt_at_ms = %s WHERE tenant_id = %s"
            " AND destination_id = %s AND status = 'pending' AND next_attempt_at_ms > %s",
            (now_ms, tenant_id, destination_id, now_ms),
        )

    async def release_all_leases(self) -> int:
        return await self._db.write(
            "UPDATE deliveries SET lease_until_ms = NULL"
            " WHERE status = 'pending' AND lease_until_ms IS NOT NULL"
        )

    async def get_delivery(self, tenant_id: TenantId, delivery_id: DeliveryId) -> Delivery | None:
        row = await self._db.fetch_one(
            f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE tenant_id = %s AND id = %s",
            (tenant_id, delivery_id),
        )
        return delivery_row(row) if row else None

    async def list_deliveries(self, tenant_id: TenantId, query: DeliveryQuery) -> list[Delivery]:
        where, args = filters(
            tenant_id,
            ("event_id = %s", query.event_id),
            ("destination_id = %s", query.destination_id),
            ("status = %s", query.status),
            ("id < %s", query.after_id),
        )
        rows = await self._db.fetch_all(
            f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE {where} ORDER BY id DESC LIMIT %s",
            (*args, query.limit),
        )
        return [delivery_row(r) for r in rows]

    async def list_attempts(
        self, tenant_id: TenantId, delivery_ids: Sequence[DeliveryId]
    ) -> list[Attempt]:
        ids = list(dict.fromkeys(delivery_ids))
        if not ids:
            return []
        rows = await self._db.fetch_all(
            "SELECT id, delivery_id, tenant_id, started_at_ms, duration_ms, outcome,"
            " status_code, error FROM attempts"
            " WHERE tenant_id = %s AND delivery_id = ANY(%s) ORDER BY id",
            (tenant_id, ids),
        )
        return [attempt_row(r) for r in rows]

    async def dead_letter_pending(
        self, tenant_id: TenantId, destination_id: DestinationId, reason: str, *, now_ms: int
    ) -> int:
        return await self._db.write(
            "UPDATE deliveries SET status = 'dead', next_attempt_at_ms = NULL,"
            " lease_until_ms = NULL, last_error = %s, updated_at_ms = %s"
            " WHERE tenant_id = %s AND destination_id = %s AND status = 'pending'",
            (reason, now_ms, tenant_id, destination_id),
        )

    async def replay_dead_letters(
        self, tenant_id: TenantId, destination_id: DestinationId, *, now_ms: int
    ) -> int:
        return await self._db.write(
            "UPDATE deliveries SET status = 'pending', next_attempt_at_ms = %s,"
            " lease_until_ms = NULL, attempts = 0, updated_at_ms = %s"
            " WHERE tenant_id = %s AND destination_id = %s AND status = 'dead'",
            (now_ms, now_ms, tenant_id, destination_id),
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
        where, args = filters(
            tenant_id,
            ("id = ANY(%s)", None if event_ids is None else list(event_ids)),
            ("received_at_ms >= %s", since_ms),
            ("received_at_ms < %s", until_ms),
        )
        async with self._db.transaction() as conn:
            # FOR SHARE: an event that purge is deleting right now is skipped, not replayed.
            cur = await conn.execute(
                f"SELECT id FROM events WHERE {where} ORDER BY id FOR SHARE", args
            )
            created = [
                new_delivery(tenant_id, EventId(event_id), destination_id, now_ms)
                for (event_id,) in await cur.fetchall()
                for destination_id in destination_ids
            ]
            await insert_deliveries(conn, created, lease_until_ms=None)
        return len(created)


def new_delivery(
    tenant_id: TenantId, event_id: EventId, destination_id: DestinationId, now_ms: int
) -> Delivery:
    return Delivery(
        id=new_delivery_id(),
        tenant_id=tenant_id,
        event_id=event_id,
        destination_id=destination_id,
        status=DeliveryStatus.PENDING,
        attempts=0,
        next_attempt_at_ms=now_ms,
        created_at_ms=now_ms,
        updated_at_ms=now_ms,
    )


async def insert_deliveries(
    conn: Connection, deliveries: Sequence[Delivery], *, lease_until_ms: int | None
) -> None:
    if not deliveries:
        return
    await conn.cursor().executemany(
        f"INSERT INTO deliveries ({NEW_DELIVERY_COLUMNS}) VALUES ({params(11)})",
        [new_delivery_values(d, lease_until_ms) for d in deliveries],
    )


def _rounds(results: Sequence[AttemptResult]) -> list[list[AttemptResult]]:
    """Split `results` into rounds holding each delivery at most once, keeping order."""
    rounds: list[list[AttemptResult]] = []
    seen: list[set[str]] = []
    for result in results:
        delivery_id = result.attempt.delivery_id
        for ids, round_ in zip(seen, rounds, strict=True):
            if delivery_id not in ids:
                ids.add(delivery_id)
                round_.append(result)
                break
        else:
            seen.append({delivery_id})
            rounds.append([result])
    return rounds


def _excluding(destination_ids: Sequence[DestinationId]) -> tuple[str, tuple[Any, ...]]:
    """The condition leaving `destination_ids` out, and its parameters (none if empty)."""
    if not destination_ids:
        return "", ()
    return " AND destination_id <> ALL(%s)", (list(destination_ids),)
