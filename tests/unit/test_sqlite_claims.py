"""The embedded store's dedupe claims: memory, the journal and the claims file (claims.py).

Real SQLite files in a temporary directory; a "restart" closes the store and opens the
same files again, as a new process would.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from tidegate.ids import new_event_id, new_tenant_id, now_ms
from tidegate.model import EventMeta, SourceId, Tenant, TenantId
from tidegate.store import EventQuery, RoutedEvent
from tidegate.store.sqlite import SqliteStore
from tidegate.store.sqlite.claims import claims_path

DAY_MS = 86_400_000


async def _tenant(store: SqliteStore) -> TenantId:
    tenant = Tenant(id=new_tenant_id(), name="t", region="eu", created_at_ms=now_ms())
    await store.tenants.create_tenant(tenant)
    return tenant.id


def _event(tenant_id: TenantId, dedupe: bytes) -> RoutedEvent:
    meta = EventMeta(
        id=new_event_id(),
        tenant_id=tenant_id,
        source_id=SourceId("src"),
        kind="segment",
        type="track",
        received_at_ms=now_ms(),
        name_index=b"n" * 16,
        dedupe_index=dedupe,
    )
    return RoutedEvent(meta=meta, ciphertext=b"ct", destination_ids=())


async def _route(store: SqliteStore, *events: RoutedEvent, at: int | None = None) -> int:
    """How many of `events` were kept (stored), by the events listed before and after."""
    tenants = {e.meta.tenant_id for e in events}
    before = sum([len(await store.events.list_events(t, EventQuery(limit=1000))) for t in tenants])
    await _record(store, *events, at=at)
    after = sum([len(await store.events.list_events(t, EventQuery(limit=1000))) for t in tenants])
    return after - before


def _rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


async def _housekeeping(store: SqliteStore, at: int | None = None) -> int:
    dropped = 0
    while found := await store.events.purge(now_ms=at or now_ms(), events_before_ms=0):
        dropped += found
    return dropped


async def test_claims_in_the_journal_survive_a_restart(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "store.db")
    tenant = await _tenant(store)
    assert await _route(store, _event(tenant, b"m1"), _event(tenant, b"m2")) == 2
    await store.aclose()
    assert len(_rows(tmp_path / "store.db", "SELECT * FROM dedupe_journal")) == 2

    store = SqliteStore(tmp_path / "store.db")
    try:
        assert await _route(store, _event(tenant, b"m1"), _event(tenant, b"m3")) == 1
    finally:
        await store.aclose()


async def test_a_flush_moves_the_claims_to_the_claims_file_and_trims_the_journal(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "store.db", flush_claims_at=3)
    tenant = await _tenant(store)
    try:
        assert await _route(store, *(_event(tenant, f"k{i}".encode()) for i in range(3))) == 3
        await _housekeeping(store)  # waits for the flush the third claim started
        assert _rows(tmp_path / "store.db", "SELECT * FROM dedupe_journal") == []
        assert len(_rows(claims_path(tmp_path / "store.db"), "SELECT * FROM claims")) == 3
        # Found in the file now, not in memory: still duplicates.
        assert await _route(store, _event(tenant, b"k1"), _event(tenant, b"new")) == 1
    finally:
        await store.aclose()

    store = SqliteStore(tmp_path / "store.db")
    try:
        assert await _route(store, _event(tenant, b"k0"), _event(tenant, b"new")) == 0
    finally:
        await store.aclose()


async def test_claims_in_both_the_file_and_the_journal_are_flushed_again_harmlessly(
    tmp_path: Path,
) -> None:
    """A crash after the claims file committed and before the journal was trimmed."""
    store = SqliteStore(tmp_path / "store.db", flush_claims_at=2)
    tenant = await _tenant(store)
    await _route(store, _event(tenant, b"a"), _event(tenant, b"b"))
    await _housekeeping(store)
    await store.aclose()
    claims = _rows(claims_path(tmp_path / "store.db"), "SELECT claim, expires_at_ms FROM claims")
    conn = sqlite3.connect(tmp_path / "store.db")
    conn.executemany("INSERT INTO dedupe_journal (claim, expires_at_ms) VALUES (?, ?)", claims)
    conn.commit()
    conn.close()

    store = SqliteStore(tmp_path / "store.db", flush_claims_at=2)
    try:
        assert await _route(store, _event(tenant, b"a"), _event(tenant, b"c")) == 1
        await _housekeeping(store)
        assert _rows(tmp_path / "store.db", "SELECT * FROM dedupe_journal") == []
        assert len(_rows(claims_path(tmp_path / "store.db"), "SELECT * FROM claims")) == 3
        assert await _route(store, _event(tenant, b"b")) == 0
    finally:
        await store.aclose()


async def test_expired_claims_leave_the_claims_file_and_the_key_is_free_again(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "store.db", flush_claims_at=1)
    tenant = await _tenant(store)
    start = now_ms()
    try:
        assert await _route(store, _event(tenant, b"old"), at=start) == 1
        await _housekeeping(store, at=start)
        assert len(_rows(claims_path(tmp_path / "store.db"), "SELECT * FROM claims")) == 1
        later = start + DAY_MS + 1
        assert await _housekeeping(store, at=later) >= 1
        assert _rows(claims_path(tmp_path / "store.db"), "SELECT * FROM claims") == []
        assert await _route(store, _event(tenant, b"old"), at=later) == 1
    finally:
        await store.aclose()


async def test_an_upgrade_keeps_the_live_claims_of_the_dedupe_table(tmp_path: Path) -> None:
    """Releases before the claims file kept claims in `dedupe`: still duplicates after."""
    store = SqliteStore(tmp_path / "store.db")
    tenant = await _tenant(store)
    await store.aclose()  # a file with the schema, and no claims file opened yet
    conn = sqlite3.connect(tmp_path / "store.db")
    conn.executemany(
        "INSERT INTO dedupe (tenant_id, dedupe_index, event_id, expires_at_ms) VALUES (?,?,?,?)",
        [
            (tenant, b"live", "evt_old", now_ms() + DAY_MS),
            (tenant, b"expired", "evt_older", now_ms() - 1),
        ],
    )
    conn.commit()
    conn.close()
    claims_path(tmp_path / "store.db").unlink(missing_ok=True)

    store = SqliteStore(tmp_path / "store.db")
    try:
        assert await _route(store, _event(tenant, b"live")) == 0
        assert await _route(store, _event(tenant, b"expired")) == 1
    finally:
        await store.aclose()


async def test_concurrent_routing_with_flushes_keeps_one_event_per_key(tmp_path: Path) -> None:
    """Routing calls racing each other and the background flushes they start: each of 60
    keys, sent four times over, is stored once."""
    store = SqliteStore(tmp_path / "store.db", flush_claims_at=7)
    tenant = await _tenant(store)
    try:
        batches = [
            [_event(tenant, f"key-{(i * 5 + j) % 60}".encode()) for j in range(8)]
            for i in range(30)
        ]
        await asyncio.gather(
            *(
                store.events.record_routed(
                    batch, now_ms=now_ms(), dedupe_window_ms=DAY_MS, lease_ms=60_000
                )
                for batch in batches
            )
        )
        await _housekeeping(store)
        stored = await store.events.list_events(tenant, EventQuery(limit=1000))
        assert sorted(e.meta.dedupe_index for e in stored) == sorted(
            f"key-{k}".encode() for k in range(60)
        )
        assert await _route(store, *(_event(tenant, f"key-{k}".encode()) for k in range(60))) == 0
    finally:
        await store.aclose()


def test_a_merge_of_thousands_keeps_every_claim_and_the_later_expiry(tmp_path: Path) -> None:
    """More claims than one multi-row statement holds, some already in the file with an
    earlier expiry and some with a later one."""
    from tidegate.embedded import connect
    from tidegate.store.sqlite.claims import SCHEMA, _merge

    conn = connect(tmp_path / "claims.db")
    try:
        conn.executescript(SCHEMA)
        first = {b"%06d-key" % i: 1_000 + i for i in range(0, 9_000, 2)}
        conn.execute("BEGIN IMMEDIATE")
        assert _merge(conn, first, now_ms=0) == 0
        conn.execute("COMMIT")
        second = {b"%06d-key" % i: 1_000 + (i if i % 4 else -i) for i in range(9_000)}
        conn.execute("BEGIN IMMEDIATE")
        _merge(conn, second, now_ms=0)
        conn.execute("COMMIT")
        stored = dict(conn.execute("SELECT claim, expires_at_ms FROM claims"))
        assert stored == {k: max(v, first.get(k, 0)) for k, v in second.items()}
        conn.execute("BEGIN IMMEDIATE")
        # what has expired by 1,001 leaves
        assert _merge(conn, {}, now_ms=1_001) == len([v for v in stored.values() if v <= 1_001])
        conn.execute("COMMIT")
    finally:
        conn.close()


async def test_a_flush_commits_slice_by_slice_and_its_claims_stay_taken_throughout(
    tmp_path: Path,
) -> None:
    """A flush of several slices is paced: between its transactions the claims file holds
    part of them, and the rest are still found, in memory."""
    from tidegate.store.sqlite.claims import _MERGE_SLICE

    flush_at = 3 * _MERGE_SLICE
    store = SqliteStore(tmp_path / "store.db", flush_claims_at=flush_at)
    tenant = await _tenant(store)
    try:
        keys = [f"key-{i:06d}".encode() for i in range(flush_at)]
        await _record(store, *(_event(tenant, key) for key in keys))  # the last starts the flush
        file = claims_path(tmp_path / "store.db")
        seen: set[int] = set()
        for _ in range(5_000):
            if file.exists():
                (count,) = _rows(file, "SELECT COUNT(*) FROM claims")[0]
                seen.add(int(count))  # type: ignore[call-overload]
                if 0 < count < flush_at:  # type: ignore[operator]
                    break
            await asyncio.sleep(0.001)
        assert any(0 < n < flush_at for n in seen), seen
        duplicates = [_event(tenant, keys[0]), _event(tenant, keys[-1])]
        assert await _kept(store, tmp_path, *duplicates) == 0
        await _housekeeping(store)
        assert _rows(file, "SELECT COUNT(*) FROM claims") == [(flush_at,)]
        assert _rows(tmp_path / "store.db", "SELECT * FROM dedupe_journal") == []
    finally:
        await store.aclose()


async def test_closing_during_a_flush_finishes_it_and_keeps_every_claim(
    tmp_path: Path,
) -> None:
    from tidegate.store.sqlite.claims import _MERGE_SLICE

    flush_at = 4 * _MERGE_SLICE
    store = SqliteStore(tmp_path / "store.db", flush_claims_at=flush_at)
    tenant = await _tenant(store)
    keys = [f"key-{i:06d}".encode() for i in range(flush_at)]
    await _record(store, *(_event(tenant, key) for key in keys))
    await store.aclose()
    assert _rows(claims_path(tmp_path / "store.db"), "SELECT COUNT(*) FROM claims") == [(flush_at,)]
    store = SqliteStore(tmp_path / "store.db")
    try:
        assert await _kept(store, tmp_path, _event(tenant, keys[1]), _event(tenant, b"new")) == 1
    finally:
        await store.aclose()


async def _record(store: SqliteStore, *events: RoutedEvent, at: int | None = None) -> None:
    await store.events.record_routed(
        list(events), now_ms=at or now_ms(), dedupe_window_ms=DAY_MS, lease_ms=60_000
    )


async def _kept(store: SqliteStore, tmp_path: Path, *events: RoutedEvent) -> int:
    """Like _route, for a store holding more than a page of events."""
    count = "SELECT COUNT(*) FROM events"
    (before,) = _rows(tmp_path / "store.db", count)[0]
    await _record(store, *events)
    (after,) = _rows(tmp_path / "store.db", count)[0]
    return int(after) - int(before)  # type: ignore[call-overload]
