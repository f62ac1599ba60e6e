"""Embedded SQLite plumbing shared by the SQLite log and the SQLite store.

One writer thread owns the write connection and commits in groups: every write
submitted while a commit is in progress joins the next transaction, so N
concurrent requests cost one fsync, not N (group commit). One failing write does
not undo the others in its group: the group is then run again with each write in
its own SAVEPOINT.
Reads run on a small pool of reader threads with their own connections (WAL
lets them proceed while the writer commits).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import structlog

from tidegate.errors import BackendUnavailable, ConfigError

T = TypeVar("T")
log = structlog.get_logger(__name__)

_MAX_GROUP = 512
# A group this large commits without lingering: its commit is already shared enough, and
# at saturation lingering only idles the writer (see `linger_s`).
_LINGER_GROUP = 16
_LOCK_TIMEOUT_S = 30.0
_LOCK_POLL_S = 0.0005
# How much each writer and reader thread started from now on lowers its own CPU priority
# (`lower_thread_priority`); 0: they run as their creator does.
_thread_nice = 0


def lower_thread_priority(increment: int) -> None:
    """Make the writer and reader threads of each EmbeddedDatabase opened after this (until
    the next call), in this process, run `increment` nice levels below their creator
    (Linux, where nice is per thread; elsewhere nothing changes). The worker process of
    `serve --processes N` calls it, so that its storage work yields the CPU to the api
    processes' when both want it, and takes what they leave (nice is not a cap). Only
    those threads: a lowered priority cannot be raised back without privilege, and the
    thread that spawns the api processes keeps its own."""
    global _thread_nice
    _thread_nice = max(0, increment)


def _lower_own_priority(increment: int) -> None:
    if increment <= 0 or sys.platform != "linux":
        return
    thread = threading.get_native_id()
    # Refused (a sandbox without setpriority): the thread runs as before.
    with contextlib.suppress(OSError):
        current = os.getpriority(os.PRIO_PROCESS, thread)
        os.setpriority(os.PRIO_PROCESS, thread, min(19, current + increment))


def sqlite_path(url: str, env_var: str) -> Path:
    """`sqlite:///relative/or/absolute/path.db` -> Path."""
    if not url.startswith("sqlite:///"):
        raise ConfigError(f"{env_var}: expected sqlite:///PATH, got {url!r}")
    return Path(url.removeprefix("sqlite:///"))


def connect(path: Path, *, page_size: int | None = None) -> sqlite3.Connection:
    """A connection in WAL mode with synchronous commits. `page_size` applies to a file
    that is still empty (SQLite fixes it with the first write, and WAL mode is one)."""
    # Compiled statements kept per connection: the store's multi-row statements come in a
    # dozen row counts each (`row_chunks`), more than sqlite3's default 128 in all.
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=30, cached_statements=512
    )
    if page_size is not None:
        conn.execute(f"PRAGMA page_size={int(page_size)}")
    # Switching a file still in rollback mode takes an exclusive lock SQLite does not wait
    # for (no busy handler): of several processes (or connections) opening a new file at
    # once, all but one were refused (5% of 200 runs of four connections at once).
    _execute_waiting(conn, "PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    # Statement journals (a statement in a group's transaction rewriting pages the
    # transaction already changed) in memory, not in a temporary file opened, written and
    # unlinked per transaction: 29% fewer pwrite calls and 11% less CPU per routed event.
    conn.execute("PRAGMA temp_store=MEMORY")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


class _Job:
    __slots__ = ("fn", "future", "loop", "queued_at")

    def __init__(
        self,
        fn: Callable[[sqlite3.Connection], Any],
        future: asyncio.Future[Any],
        loop: asyncio.AbstractEventLoop,
        queued_at: float,
    ) -> None:
        self.fn = fn
        self.future = future
        self.loop = loop
        self.queued_at = queued_at


class EmbeddedDatabase:
    """A SQLite file with a group-committing writer thread and reader threads."""

    def __init__(
        self,
        path: Path,
        schema: str,
        *,
        readers: int = 2,
        page_size: int | None = None,
        writer_cache_kib: int | None = None,
        linger_s: float = 0.0,
    ) -> None:
        """`page_size`: for a new file. `writer_cache_kib`: the write connection's page
        cache, instead of SQLite's 2 MiB (a transaction that dirties more pages than its
        cache holds writes some of them out before its commit, and reads them back).
        `linger_s`: how long a write may wait for others to share its commit (see
        `_write_loop`); 0 commits whatever is queued at once."""
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():  # SQLite gives its -wal and -shm files the same mode
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        self.path = path
        self._writer_cache_kib = writer_cache_kib
        self._linger_s = linger_s
        bootstrap = connect(path, page_size=page_size)
        try:
            bootstrap.executescript(schema)
        finally:
            bootstrap.close()
        self._nice = _thread_nice  # for its threads, which start now or at their first read
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._grown = threading.Event()  # wakes a lingering writer (see `write`)
        self._writer = threading.Thread(target=self._write_loop, name=f"sqlite-writer:{path.name}")
        self._writer.daemon = True
        self._writer.start()
        self._local = threading.local()
        self._readers = ThreadPoolExecutor(
            readers,
            thread_name_prefix=f"sqlite-reader:{path.name}",
            initializer=_lower_own_priority,
            initargs=(self._nice,),
        )
        self._reader_conns: list[sqlite3.Connection] = []
        self._closed = False

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` in a transaction; return once that transaction is durably committed."""
        if self._closed:
            raise BackendUnavailable("the embedded database is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        jobs = self._jobs
        jobs.put(_Job(fn, future, loop, time.monotonic()))
        grown = self._grown
        if self._linger_s and not grown.is_set() and jobs.qsize() >= _LINGER_GROUP - 1:
            grown.set()
        return await future

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise BackendUnavailable("the embedded database is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._run_read, fn)

    def read_now(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run a small read on the calling thread: for point and tail lookups the hot path
        makes per batch, where a hop to a reader thread and back costs more than the read
        (WAL readers never wait for the writer). Not for scans."""
        if self._closed:
            raise BackendUnavailable("the embedded database is closed")
        return self._run_read(fn)

    def _run_read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path)
            conn.execute("PRAGMA query_only=ON")
            self._local.conn = conn
            self._reader_conns.append(conn)
        try:
            conn.execute("BEGIN")
            try:
                return fn(conn)
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise BackendUnavailable(f"embedded database read failed: {exc}") from exc

    def _write_loop(self) -> None:
        _lower_own_priority(self._nice)
        conn = connect(self.path)
        # Waits for another process's write lock are ours (`_begin`), not SQLite's.
        conn.execute("PRAGMA busy_timeout=0")
        if self._writer_cache_kib is not None:
            conn.execute(f"PRAGMA cache_size=-{int(self._writer_cache_kib)}")
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    return
                group = [job]
                stop = False
                # Until the first job has waited `linger_s` (or the group is large), wait
                # for more to join it: a durable commit costs about 70 µs of CPU (its fsync,
                # mostly), so sharing one is worth a millisecond or two of a caller's time.
                deadline = job.queued_at + self._linger_s
                while len(group) < _MAX_GROUP:
                    try:
                        nxt = self._jobs.get_nowait()
                    except queue.Empty:
                        wait = deadline - time.monotonic()
                        if wait <= 0 or len(group) >= _LINGER_GROUP:
                            break
                        # Sleep, rather than wait on the queue: a wait there would
                        # wake this thread for every job that joins (a context switch and
                        # a turn at the GIL each); `write` wakes it once the group is large.
                        self._grown.wait(wait)
                        self._grown.clear()
                        continue
                    if nxt is None:
                        stop = True
                        break
                    group.append(nxt)
                self._commit_group(conn, group)
                if stop:
                    return
        finally:
            conn.close()

    def _commit_group(self, conn: sqlite3.Connection, group: list[_Job]) -> None:
        try:
            results = self._run_together(conn, group)
            if results is None:
                results = self._run_isolated(conn, group)
        except sqlite3.Error as exc:
            log.error("sqlite.commit_failed", path=str(self.path), error=str(exc))
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            failure = BackendUnavailable(f"embedded database commit failed: {exc}")
            _settle([(job, False, failure) for job in group])
            return
        _settle(
            [
                (job, ok, value)
                if ok or not isinstance(value, sqlite3.Error)
                else (job, False, BackendUnavailable(f"embedded database write failed: {value}"))
                for job, ok, value in results
            ]
        )

    def _run_together(
        self, conn: sqlite3.Connection, group: list[_Job]
    ) -> list[tuple[_Job, bool, Any]] | None:
        """The common case: the group's jobs back to back in one transaction, committed.
        If one fails in a group of several, roll back and return None (the caller runs
        the group isolated). No SAVEPOINT per job: two statements fewer each, and every
        statement is a round trip for the GIL with the event loop's thread."""
        results: list[tuple[_Job, bool, Any]] = []
        _begin(conn)
        for job in group:
            try:
                value = job.fn(conn)
            except Exception as exc:  # noqa: BLE001 - returned to that job's caller
                conn.execute("ROLLBACK")
                return None if len(group) > 1 else [(job, False, exc)]
            results.append((job, True, _detached(value)))
        conn.execute("COMMIT")
        return results

    def _run_isolated(
        self, conn: sqlite3.Connection, group: list[_Job]
    ) -> list[tuple[_Job, bool, Any]]:
        """Each job in its own SAVEPOINT, so a failing write does not undo the others."""
        results: list[tuple[_Job, bool, Any]] = []
        _begin(conn)
        for job in group:
            conn.execute("SAVEPOINT job")
            try:
                value = job.fn(conn)
            except Exception as exc:  # noqa: BLE001 - returned to that job's caller
                conn.execute("ROLLBACK TO job")
                conn.execute("RELEASE job")
                results.append((job, False, exc))
            else:
                conn.execute("RELEASE job")
                results.append((job, True, _detached(value)))
        conn.execute("COMMIT")
        return results

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._jobs.put(None)
        self._grown.set()
        await asyncio.to_thread(self._writer.join)
        self._readers.shutdown(wait=True)
        for conn in self._reader_conns:
            conn.close()


def _execute_waiting(conn: sqlite3.Connection, sql: str) -> None:
    """Run `sql`, trying again every half millisecond (for up to 30 s) while another
    connection holds the lock it needs."""
    deadline = time.monotonic() + _LOCK_TIMEOUT_S
    while True:
        try:
            conn.execute(sql)
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
        time.sleep(_LOCK_POLL_S)


def _begin(conn: sqlite3.Connection) -> None:
    """BEGIN IMMEDIATE, waiting for another process's write lock in steps of half a
    millisecond. SQLite's own busy handler sleeps 1, 2, 5, 10, 15, 20, 25... ms between
    tries, so a writer behind a busy one (an api process's audit record behind the
    worker's routing, on one store file) waited 38 ms at the 95th percentile of reads
    and over 100 ms at the 99th: each try came after the lock had been taken again."""
    _execute_waiting(conn, "BEGIN IMMEDIATE")


def _detached(value: Any) -> Any:
    """A cursor must not reach the event loop's thread: freed there, it resets a cached
    statement the writer thread may be running (SQLITE_MISUSE). Close it here."""
    if isinstance(value, sqlite3.Cursor):
        value.close()
        return None
    return value


def _settle(outcomes: list[tuple[_Job, bool, Any]]) -> None:
    """Resolve the group's futures: one wake-up per event loop, not one per job."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, bool, Any]]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].loop, []).append(outcome)
    for loop, settled in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the caller's loop is gone: nothing to tell
            loop.call_soon_threadsafe(_resolve, settled)


def _resolve(outcomes: list[tuple[_Job, bool, Any]]) -> None:
    for job, ok, value in outcomes:
        if job.future.done():
            continue
        if ok:
            job.future.set_result(value)
        else:
            job.future.set_exception(value)
