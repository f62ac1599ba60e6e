"""Freeze the store's SQL at a migration level, and replay it on a newer schema (ADR 0010).

    python -m tests.contract.migration_queries capture [--engine postgres|sqlite|all]

runs `migration_workload` through the real stores of whichever `tidegate` is on
sys.path (PYTHONPATH=<a worktree>/src captures an older release) and records every
statement they send, with its parameters, at the driver:

- PostgreSQL: `psycopg.AsyncCursor.execute` and `executemany` are wrapped for the
  capture only (`connection.execute` goes through them too, in pipeline mode as well).
  The store opens a database `tidegate migrate` already brought to the code's newest
  migration, so the corpus holds the application's SQL and its schema check, not DDL.
- SQLite: every `sqlite3.connect` gets a trace callback, which sees each statement with
  its parameters bound (BLOBs as x'..'). Transaction control is left out, as is
  `PRAGMA query_only`: the replay runs each statement on its own, on one connection.

Each statement is then replayed on two fresh databases of the same level to record its
expected outcome (row count, columns, rows as a multiset) and to check that the outcome
is deterministic. The corpus goes to `queries/<engine>-level-NNNN.json`, NNNN being the
newest migration of the captured code. Parameters keep their Python types in JSON:
bytes are {"$bytes": base64}, tuples {"$tuple": [...]}.

`test_migration_compat.py` replays the corpora of earlier levels on the newest schema.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import re
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

import tidegate
from tests.contract.migration_workload import run_reads, run_workload
from tests.pg import Databases, find_or_start_postgres, stop_postgres
from tidegate.store import open_store
from tidegate.store.migrations import load_migrations, migrate_store

QUERIES = Path(__file__).parent / "queries"
FORMAT = 1
Entry = dict[str, Any]
Outcome = dict[str, Any]

# Statements the replay leaves out: it runs every statement on its own, in autocommit,
# on one connection (a reader's query_only would make it read-only).
_SQLITE_SKIPPED = re.compile(
    r"\s*(BEGIN|COMMIT|END|ROLLBACK|SAVEPOINT|RELEASE)\b|\s*PRAGMA\s+query_only\b", re.I
)
_PRAGMA = re.compile(r"\s*PRAGMA\b", re.I)


def corpus_path(engine: str, level: int, folder: Path = QUERIES) -> Path:
    return folder / f"{engine}-level-{level:04d}.json"


def dump(corpus: dict[str, Any]) -> str:
    """JSON with one statement a line, so a recapture diffs statement by statement."""
    head = {k: v for k, v in corpus.items() if k != "statements"}
    order = ("n", "call", "phase", "check", "sql", "many", "params", "expect")
    lines = [json.dumps({k: s[k] for k in order}, ensure_ascii=False) for s in corpus["statements"]]
    body = ",\n".join(lines)
    return json.dumps(head, indent=1)[:-2] + f',\n "statements": [\n{body}\n ]\n}}\n'


def load_corpus(path: Path) -> dict[str, Any]:
    corpus: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    if corpus.get("format") != FORMAT:
        raise ValueError(f"{path}: corpus format {corpus.get('format')!r}, expected {FORMAT}")
    return corpus


# -- parameters and results as JSON ------------------------------------------------------


def encode(value: Any, *, strict: bool = True) -> Any:
    """JSON for a parameter (strict: it must decode to what the store sent) or a result."""
    if value is None or isinstance(value, bool | float):
        return value
    if isinstance(value, int):
        return int(value)  # an IntEnum goes to the driver as its number
    if isinstance(value, str):
        return str.__str__(value)  # a StrEnum goes to the driver as its value
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$bytes": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, list):
        return [encode(v, strict=strict) for v in value]
    if isinstance(value, tuple):
        return {"$tuple": [encode(v, strict=strict) for v in value]}
    if strict:
        raise TypeError(f"no JSON form for a {type(value).__name__} parameter: extend encode()")
    return {"$repr": f"{type(value).__name__}:{value!r}"}


def decode(value: Any) -> Any:
    if isinstance(value, list):
        return [decode(v) for v in value]
    if isinstance(value, dict):
        if "$bytes" in value:
            return base64.b64decode(value["$bytes"])
        if "$tuple" in value:
            return tuple(decode(v) for v in value["$tuple"])
        raise ValueError(f"unknown tagged value {value!r}")
    return value


def _outcome(rowcount: int, columns: Sequence[str] | None, rows: Sequence[Any] | None) -> Outcome:
    """What a statement did, as JSON; rows sorted, so a different plan's order still matches."""
    encoded = None
    if rows is not None:
        encoded = sorted((encode(list(r), strict=False) for r in rows), key=lambda r: json.dumps(r))
    outcome: Outcome = json.loads(
        json.dumps({"rowcount": rowcount, "columns": columns, "rows": encoded})
    )
    return outcome


# -- recording ---------------------------------------------------------------------------


class Recorder:
    """Collects statements from any thread, labelled with the store method that sent them."""

    def __init__(self) -> None:
        self.statements: list[Entry] = []
        self.phase = "open"  # "open": opening the store (schema checks); else "workload"
        self.deploy_at: int | None = None
        self._lock = threading.Lock()

    def add(self, text: str, params: Any, *, many: bool) -> None:
        entry = {
            "phase": self.phase,
            "call": _store_method(),
            "sql": text,
            "many": many,
            "params": None if params is None else encode(params),
        }
        with self._lock:
            self.statements.append(entry)

    def add_sqlite(self, text: str) -> None:
        if not _SQLITE_SKIPPED.match(text):
            self.add(text, None, many=False)

    def mark_deploy(self) -> None:
        with self._lock:
            self.deploy_at = len(self.statements)


def _store_method() -> str:
    """The store method the caller called: the outermost public one on the stack (helpers
    such as `_one` and closures run by the SQLite writer thread resolve to it)."""
    found = "?"
    frame = sys._getframe(2)
    while frame is not None:
        code = frame.f_code
        if "/tidegate/store/" in code.co_filename.replace("\\", "/"):
            name = code.co_qualname.split(".<locals>")[0].rsplit(".", 1)[-1]
            if not name.startswith("_"):
                found = name
        frame = frame.f_back  # type: ignore[assignment]
    return found


@contextmanager
def recording_psycopg(recorder: Recorder) -> Iterator[None]:
    cls = psycopg.AsyncCursor
    execute, executemany = cls.execute, cls.executemany

    def text(cursor: Any, query: Any) -> str:
        if isinstance(query, sql.Composable):
            return query.as_string(cursor.connection)
        return query.decode() if isinstance(query, bytes) else str(query)

    async def traced_execute(self: Any, query: Any, params: Any = None, **kw: Any) -> Any:
        recorder.add(text(self, query), params, many=False)
        return await execute(self, query, params, **kw)

    async def traced_executemany(self: Any, query: Any, params_seq: Any, **kw: Any) -> Any:
        params_seq = list(params_seq)  # it may be a generator: read once, for both
        recorder.add(text(self, query), params_seq, many=True)
        return await executemany(self, query, params_seq, **kw)

    cls.execute, cls.executemany = traced_execute, traced_executemany  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        cls.execute, cls.executemany = execute, executemany  # type: ignore[method-assign]


@contextmanager
def recording_sqlite(recorder: Recorder) -> Iterator[None]:
    connect = sqlite3.connect

    def traced_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = connect(*args, **kwargs)
        conn.set_trace_callback(recorder.add_sqlite)
        return conn

    sqlite3.connect = traced_connect  # type: ignore[assignment]
    try:
        yield
    finally:
        sqlite3.connect = connect


# -- replay ------------------------------------------------------------------------------


def replay_postgres(url: str, statements: Sequence[Entry]) -> list[Outcome | str]:
    """Run each statement on its own (autocommit); an outcome, or the error as a string."""
    done: list[Outcome | str] = []
    with psycopg.connect(url, autocommit=True, prepare_threshold=None) as conn:
        for entry in statements:
            try:
                with conn.cursor() as cur:
                    if entry["many"]:
                        cur.executemany(entry["sql"], decode(entry["params"]))
                    else:
                        cur.execute(entry["sql"], decode(entry["params"]))
                    if cur.description is None:
                        done.append(_outcome(cur.rowcount, None, None))
                    else:
                        names = [c.name for c in cur.description]
                        done.append(_outcome(cur.rowcount, names, cur.fetchall()))
            except psycopg.Error as exc:
                done.append(f"{type(exc).__name__}: {str(exc).strip()}")
    return done


def replay_sqlite(path: Path, statements: Sequence[Entry]) -> list[Outcome | str]:
    done: list[Outcome | str] = []
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for entry in statements:
            try:
                cur = conn.execute(entry["sql"])
                if cur.description is None:
                    done.append(_outcome(cur.rowcount, None, None))
                else:
                    names = [c[0] for c in cur.description]
                    done.append(_outcome(cur.rowcount, names, cur.fetchall()))
            except sqlite3.Error as exc:
                done.append(f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()
    return done


def problems(statements: Sequence[Entry], got: Sequence[Outcome | str]) -> list[str]:
    """Statements that failed, or (where `check` is "outcome") answered differently."""
    found = []
    for entry, outcome in zip(statements, got, strict=True):
        where = f"#{entry['n']} {entry['call']}() [{entry['phase']}]: {_short(entry['sql'], 300)}"
        if isinstance(outcome, str):
            found.append(f"{where}\n    failed: {outcome}")
        elif entry["check"] == "outcome" and outcome != entry["expect"]:
            found.append(
                f"{where}\n    expected {_short(json.dumps(entry['expect']), 400)}"
                f"\n    got      {_short(json.dumps(outcome), 400)}"
            )
    return found


def _short(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- capture -----------------------------------------------------------------------------


async def _capture(url: str, engine: str, recorder: Recorder) -> None:
    reopen_url = f"{url}?migrate=false" if engine == "postgres" else url
    for store_url, work in ((url, "workload"), (reopen_url, "reads")):
        recorder.phase = "open"
        store = open_store(store_url)
        try:
            await store.ping()
            recorder.phase = "workload"
            if work == "workload":
                await run_workload(store, recorder.mark_deploy)
            else:
                await run_reads(store)  # a restarted process (migrate=false on PostgreSQL)
        finally:
            await store.aclose()


def _finish(recorder: Recorder, baseline: Callable[[], list[Outcome | str]]) -> list[Entry]:
    statements = recorder.statements
    for n, entry in enumerate(statements):
        entry["n"] = n
        schema_only = entry["phase"] == "open" or _PRAGMA.match(entry["sql"])
        entry["check"] = "success" if schema_only else "outcome"
    first, second = baseline(), baseline()
    failed = [f"#{n}: {o}" for n, o in enumerate(first) if isinstance(o, str)]
    if failed:
        shown = "\n".join(failed)
        raise SystemExit(f"the captured statements do not replay at their own level:\n{shown}")
    for entry, a, b in zip(statements, first, second, strict=True):
        if entry["check"] == "outcome" and a != b:
            raise SystemExit(f"#{entry['n']} answers differently on each replay: {entry['sql']}")
        entry["expect"] = a
    return statements


def capture(engine: str, admin_url: str | None, tmp: Path) -> dict[str, Any]:
    """The corpus of the `tidegate` on sys.path for `engine` ("postgres" or "sqlite")."""
    migrations = load_migrations("postgres")
    recorder = Recorder()
    if engine == "postgres":
        databases = Databases(admin_url or find_or_start_postgres(tmp))

        def migrated() -> str:
            url = databases.create()
            asyncio.run(migrate_store(url))
            return url

        def baseline() -> list[Outcome | str]:
            url = migrated()
            try:
                return replay_postgres(url, recorder.statements)
            finally:
                databases.drop(url)

        url = migrated()
        try:
            with recording_psycopg(recorder):
                asyncio.run(_capture(url, engine, recorder))
            statements = _finish(recorder, baseline)
        finally:
            databases.drop_all()
            stop_postgres(tmp)  # if find_or_start_postgres had to start one
    else:
        counter = iter(range(1_000_000))

        def baseline() -> list[Outcome | str]:
            return replay_sqlite(tmp / f"baseline-{next(counter)}.db", recorder.statements)

        with recording_sqlite(recorder):
            asyncio.run(_capture(f"sqlite:///{tmp}/store.db", engine, recorder))
        statements = _finish(recorder, baseline)
    source = Path(tidegate.__file__).resolve().parent
    return {
        "format": FORMAT,
        "engine": engine,
        "level": len(migrations),
        "migrations": [f"{m.version:04d}_{m.name}" for m in migrations],
        "captured_from": _commit(source),
        "deploy_at": recorder.deploy_at,
        "statements": statements,
    }


def _commit(source: Path) -> str:
    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(source), *args], capture_output=True, text=True, check=False
        )
        return done.stdout.strip()

    commit = git("rev-parse", "HEAD") or "unknown"
    return commit + (" (with uncommitted changes)" if git("status", "--porcelain", ".") else "")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.contract.migration_queries")
    commands = parser.add_subparsers(dest="command", required=True)
    cap = commands.add_parser("capture", help="freeze the SQL of the tidegate on sys.path")
    cap.add_argument("--engine", choices=["postgres", "sqlite", "all"], default="all")
    cap.add_argument("--out", type=Path, default=QUERIES, help="folder for the corpus files")
    cap.add_argument("--postgres-url", help="an admin URL (default: what tests/pg.py finds)")
    args = parser.parse_args(argv)
    print(f"capturing the SQL of {Path(tidegate.__file__).parent}", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    for engine in ["postgres", "sqlite"] if args.engine == "all" else [args.engine]:
        with tempfile.TemporaryDirectory(prefix="tidegate-capture-") as tmp:
            corpus = capture(engine, args.postgres_url, Path(tmp))
        path = corpus_path(engine, corpus["level"], args.out)
        path.write_text(dump(corpus), encoding="utf-8")
        print(f"{path}: {len(corpus['statements'])} statements", file=sys.stderr)


if __name__ == "__main__":
    main()
