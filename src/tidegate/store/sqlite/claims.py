"""Dedupe claims on the embedded store, written in sorted runs instead of one by one.

A claim is an event's `(tenant, dedupe_index)` with an expiry: while it lives, another
event with the same key is a duplicate. Keys are HMACs, so a B-tree keyed by them takes
each new claim on a random page. Kept in the store file next to the events (the
`dedupe` table, until this module), 2,000 claims in a routing transaction dirtied about
as many pages, each written to the WAL and copied back by the checkpoint. With 800,000
claims, the routing statements took 46 µs of CPU and wrote 19 KB per event, against 9 µs
and 1.6 KB without the claims (docs/benchmarks.md, ninth session).

So a claim lives in three places, newest first:

- **memory**: `_pending`, the claims made since the last flush (key -> expiry), and
  `_flushing`, those of the flush under way;
- **the journal** (`dedupe_journal` in the store file): the same claims, appended in the
  routing transaction that keeps their events, so they commit with them (ADR 0005). Its
  keys grow with `seq`, so appending touches the last page only;
- **the claims file** (`<store>.claims.db`): every older claim. A flush writes the
  pending claims to it in key order once they number `flush_at`, a slice of keys per
  transaction with a pause after each, deletes the expired ones, and then trims the
  journal up to where it read. Each of its pages is written about once per flush, however
  many claims land on it.

Looking a key up checks memory, then the claims file. One router writes claims (the
embedded store has one worker, `exclusive_worker`); a router that starts loads the
journal into memory, so claims made before a crash are there. A crash between the claims
file's commit and the journal's trim leaves claims in both: the next flush writes them
again, which changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from functools import partial
from itertools import islice
from pathlib import Path

import structlog

from tidegate import memory
from tidegate.embedded import EmbeddedDatabase
from tidegate.ids import now_ms as clock
from tidegate.store.sqlite.database import execute_rows, placeholders

log = structlog.get_logger(__name__)

# Claims held in memory before a flush writes them to the claims file: about 110 bytes
# each, so 11 MB, twice that while a flush runs.
FLUSH_CLAIMS = 100_000
_PROBE_CHUNK = 500
_EXPIRE = 50_000
_TRIM = 5_000
_MERGE_SLICE = 4_096  # claims per transaction of a flush, a few statements' worth
_PACE = 2.0  # a flush pauses this many times as long as each slice took
_TAG_BYTES = 8
SCHEMA = """
CREATE TABLE IF NOT EXISTS claims (
    claim         BLOB    PRIMARY KEY,
    expires_at_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS claims_expiry ON claims (expires_at_ms);
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


def claims_path(store: Path) -> Path:
    """`store.claims.db` next to `store.db`."""
    return store.with_name(f"{store.stem}.claims{store.suffix or '.db'}")


def claim_key(tenant_id: str, dedupe_index: bytes) -> bytes:
    """One bytes key per (tenant, dedupe_index): the index, then 8 bytes of the tenant id's
    hash. Tenants' indexes are HMACs under different keys and never meet; the tag keeps two
    tenants apart even if they did (or where a caller passes the same bytes for both)."""
    tag = hashlib.blake2b(tenant_id.encode(), digest_size=_TAG_BYTES).digest()
    return dedupe_index + tag


class Claims:
    """The claims of one store file. Opened by the first router call in a process."""

    def __init__(self, store: EmbeddedDatabase, path: Path, *, flush_at: int) -> None:
        self._store = store
        self._path = path
        self.flush_at = flush_at
        self.lock = asyncio.Lock()  # one routing transaction (and flush swap) at a time
        self._file: EmbeddedDatabase | None = None
        self._file_empty = True
        self._pending: dict[bytes, int] = {}
        self._flushing: dict[bytes, int] = {}
        self._flush_task: asyncio.Task[int] | None = None
        self._tags: dict[str, bytes] = {}
        self._closing = False  # a flush under way stops pausing

    def key(self, tenant_id: str, dedupe_index: bytes) -> bytes:
        tag = self._tags.get(tenant_id)
        if tag is None:
            if len(self._tags) > 10_000:
                self._tags.clear()
            tag = self._tags[tenant_id] = claim_key(tenant_id, b"")
        return dedupe_index + tag

    async def open(self) -> None:
        """Open the claims file and load the journal (claims not flushed yet); idempotent."""
        if self._file is not None:
            return
        # SQLite's default page cache (2 MiB): a flush walks the B-tree in key order, and
        # 8 MiB took the same CPU (a flush of 100,000 into 1,000,000 claims: 0.66-0.69 s).
        file = EmbeddedDatabase(self._path, SCHEMA, readers=1)
        try:
            if not await file.read(_imported):
                legacy = await self._store.read(lambda c: _legacy_claims(c, clock()))
                await file.write(lambda c: _import_legacy(c, legacy))
            self._file_empty = await file.read(_is_empty)
            journal = await self._store.read(_journal)
        except BaseException:
            await file.aclose()
            raise
        _keep_latest(self._pending, journal)
        self._file = file

    async def taken(self, keys: Sequence[bytes], now_ms: int) -> set[bytes]:
        """The keys among `keys` with a live claim."""
        taken: set[bytes] = set()
        unknown: list[bytes] = []
        pending, flushing = self._pending, self._flushing
        for key in keys:
            expires = pending.get(key)
            if expires is None:
                expires = flushing.get(key)
            if expires is None:
                unknown.append(key)
            elif expires > now_ms:
                taken.add(key)
            # else: memory holds the key's newest claim, and it has expired
        file = self._file
        if unknown and file is not None and not self._file_empty:
            taken.update(await file.read(lambda c: _probe(c, unknown, now_ms)))
        return taken

    def journal(self, conn: sqlite3.Connection, keys: Sequence[bytes], expires_ms: int) -> None:
        """Append claims to the journal, in the routing transaction (writer thread)."""
        execute_rows(
            conn,
            "INSERT INTO dedupe_journal (claim, expires_at_ms)"
            " SELECT column1, ? FROM (VALUES {values})",
            [(key,) for key in keys],
            first=(expires_ms,),
        )

    def claimed(self, keys: Iterable[bytes], expires_ms: int) -> None:
        """Claims whose journal rows have committed."""
        pending = self._pending
        for key in keys:
            pending[key] = expires_ms
        if len(pending) >= self.flush_at and self._flush_task is None:
            self._flush_task = asyncio.create_task(self._flush_logged())

    async def flush(self, now_ms: int) -> int:
        """Write the pending claims to the claims file and drop the expired ones there (for
        housekeeping); the number dropped. After the flush under way, if there is one."""
        if self._file is None:
            return 0
        while (running := self._flush_task) is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(running)
        task = self._flush_task = asyncio.create_task(self._flush(now_ms))
        return await asyncio.shield(task)

    async def _flush_logged(self) -> int:
        try:
            return await self._flush(None)
        except Exception as exc:  # noqa: BLE001 - the journal keeps them: the next flush retries
            log.error("claims.flush_failed", error=str(exc))
            return 0

    async def _flush(self, now_ms: int | None) -> int:
        file = self._file
        if file is None:
            self._flush_task = None
            return 0
        try:
            async with self.lock:
                # Between routing transactions: the journal holds `_pending` and no more,
                # up to its last row.
                upto = await self._store.read(_journal_end)
                self._flushing, self._pending = self._pending, {}
            flushing = self._flushing
            at = clock() if now_ms is None else now_ms
            await self._merge_paced(file, flushing)
            expired = await file.write(partial(_expire, now_ms=at))
            # The journal up to `upto`, a chunk per transaction, so the routing and attempt
            # records queued behind it wait for a chunk, not for the whole trim.
            trimmed = _TRIM
            while upto is not None and trimmed == _TRIM:
                trimmed = await self._store.write(partial(_trim_journal, upto=upto))
            self._flushing = {}
            # The flushed claims' memory (a dozen MB at FLUSH_CLAIMS) back to the system,
            # rather than left for the heap's high-water mark to keep.
            await asyncio.to_thread(memory.trim)
            return expired
        except BaseException:
            # Back into memory: the journal still holds them, and they stay findable until
            # a flush gets through.
            _keep_latest(self._pending, self._flushing.items())
            self._flushing = {}
            raise
        finally:
            self._flush_task = None

    async def _merge_paced(self, file: EmbeddedDatabase, claims: dict[bytes, int]) -> None:
        """`claims` into the claims file in key order, a slice per transaction, pausing
        after each for `_PACE` times as long as it took, while the next flush is not due.

        A flush of 100,000 takes about 0.6 s of CPU; at once, in the thread that shares
        process 0's GIL with the router and the dispatcher, it made a burst they queued
        behind (delivery p99 up to 0.5 s every 20 s at 5,000 events/s). Spread over a few
        seconds, it fits in the CPU they leave. Each slice covers a range of keys of its
        own, so its pages are written about once, as in one transaction; a crash between
        slices leaves the journal whole, and the next flush writes them again."""
        ordered = _in_key_order(claims)
        loop = asyncio.get_running_loop()
        while True:
            began = loop.time()
            merged = await file.write(partial(_merge_slice, claims=claims, ordered=ordered))
            self._file_empty = False
            if merged < _MERGE_SLICE:
                return
            if len(self._pending) < self.flush_at and not self._closing:
                await asyncio.sleep((loop.time() - began) * _PACE)

    async def aclose(self) -> None:
        self._closing = True
        task = self._flush_task
        if task is not None:
            # A failure was logged by the task; the journal keeps its claims.
            with contextlib.suppress(Exception):
                await task
        if self._file is not None:
            await self._file.aclose()
            self._file = None


def _keep_latest(into: dict[bytes, int], claims: Iterable[tuple[bytes, int]]) -> None:
    """Add `claims` to `into`, keeping the later expiry where a key is in both."""
    for key, expires in claims:
        if expires > into.get(key, 0):
            into[key] = expires


def _probe(conn: sqlite3.Connection, keys: list[bytes], now_ms: int) -> list[bytes]:
    found: list[bytes] = []
    for start in range(0, len(keys), _PROBE_CHUNK):
        chunk = keys[start : start + _PROBE_CHUNK]
        found += (
            claim
            for (claim,) in conn.execute(
                f"SELECT claim FROM claims WHERE claim IN ({placeholders(len(chunk))})"
                " AND expires_at_ms > ?",
                [*chunk, now_ms],
            )
        )
    return found


def _merge(conn: sqlite3.Connection, claims: dict[bytes, int], now_ms: int) -> int:
    """All of `claims` in key order, then up to _EXPIRE expired ones out; the number out."""
    ordered = _in_key_order(claims)
    while _merge_slice(conn, claims=claims, ordered=ordered) == _MERGE_SLICE:
        pass
    return _expire(conn, now_ms=now_ms)


def _merge_slice(
    conn: sqlite3.Connection, *, claims: dict[bytes, int], ordered: Iterator[bytes]
) -> int:
    """The next _MERGE_SLICE claims of `ordered` (or fewer, at its end); how many.

    Multi-row statements of up to 1,024 claims each: a statement per claim gave up the
    GIL and took it back 100,000 times a flush, and each time the writer thread queued
    behind the event loop's thread. Under load a flush of 100,000 took 2.3 s and held
    deliveries back by up to half a second; beside a thread running Python without
    pause, over five minutes."""
    keys = list(islice(ordered, _MERGE_SLICE))
    execute_rows(
        conn,
        "INSERT INTO claims (claim, expires_at_ms) VALUES {values} ON CONFLICT (claim)"
        " DO UPDATE SET expires_at_ms = MAX(expires_at_ms, excluded.expires_at_ms)",
        [(key, claims[key]) for key in keys],
    )
    return len(keys)


def _expire(conn: sqlite3.Connection, *, now_ms: int) -> int:
    """Up to _EXPIRE expired claims out (housekeeping calls again while some remain)."""
    return int(
        conn.execute(
            "DELETE FROM claims WHERE claim IN"
            " (SELECT claim FROM claims WHERE expires_at_ms <= ? LIMIT ?)",
            (now_ms, _EXPIRE),
        ).rowcount
    )


def _in_key_order(claims: dict[bytes, int]) -> Iterator[bytes]:
    """The claims' keys sorted, a first byte at a time. One sort of 100,000 keys held the
    GIL, and so the event loop, for 26-28 ms; a sort of a 256th of them takes a few dozen
    µs, and the thread can be switched out between them. (Letting SQLite sort, through a
    temporary table, grew the process by 5-30 MB a flush.)"""
    buckets: list[list[bytes]] = [[] for _ in range(256)]
    for key in claims:
        buckets[key[0]].append(key)
    for bucket in buckets:
        bucket.sort()
        yield from bucket


def _trim_journal(conn: sqlite3.Connection, *, upto: int) -> int:
    """Up to _TRIM journal rows at or below `upto`, oldest first; how many."""
    return int(
        conn.execute(
            "DELETE FROM dedupe_journal WHERE seq IN"
            " (SELECT seq FROM dedupe_journal WHERE seq <= ? ORDER BY seq LIMIT ?)",
            (upto, _TRIM),
        ).rowcount
    )


def _is_empty(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM claims LIMIT 1").fetchone() is None


def _journal(conn: sqlite3.Connection) -> list[tuple[bytes, int]]:
    return conn.execute("SELECT claim, expires_at_ms FROM dedupe_journal").fetchall()


def _journal_end(conn: sqlite3.Connection) -> int | None:
    (last,) = conn.execute("SELECT MAX(seq) FROM dedupe_journal").fetchone()
    return None if last is None else int(last)


def _imported(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM meta WHERE name = 'legacy_imported'").fetchone() is not None


def _legacy_claims(conn: sqlite3.Connection, now_ms: int) -> list[tuple[str, bytes, int]]:
    """The live claims of the `dedupe` table, where releases before this module kept them
    (and where one would keep them again after a rollback)."""
    return conn.execute(
        "SELECT tenant_id, dedupe_index, expires_at_ms FROM dedupe WHERE expires_at_ms > ?",
        (now_ms,),
    ).fetchall()


def _import_legacy(conn: sqlite3.Connection, rows: list[tuple[str, bytes, int]]) -> None:
    """Once per claims file: the `dedupe` table's live claims, so an upgrade keeps them."""
    claims: dict[bytes, int] = {}
    _keep_latest(claims, ((claim_key(tenant, index), expires) for tenant, index, expires in rows))
    _merge(conn, claims, clock())
    conn.execute(
        "INSERT OR REPLACE INTO meta (name, value) VALUES ('legacy_imported', ?)",
        (str(len(rows)),),
    )
