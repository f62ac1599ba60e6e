"""Find or start the PostgreSQL server the tests use, and give each test its own database.

The server on 127.0.0.1:5432 (user postgres, trust auth) is used when it answers.
Otherwise a throwaway cluster is started with the installed binaries (installing
the `postgresql` package first if there are none) and stopped at the end. Anything
that goes wrong fails loudly with its reason: the tests never skip PostgreSQL.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from tests.support import free_port, wait_until

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
_CLUSTER = "pgdata"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server could be found or started: the reason is the message."""


def answers(url: str, timeout_s: int = 2) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=timeout_s, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return False
    return True


def find_or_start_postgres(tmp_dir: Path, probe_url: str = DEFAULT_ADMIN_URL) -> str:
    """An admin URL (user postgres, database postgres): the local server, or one started.

    A started cluster lives under `tmp_dir` (or, when running as root, in a directory
    the `postgres` user owns, named in `tmp_dir/pgdata`); `stop_postgres(tmp_dir)` stops it.
    """
    if answers(probe_url):
        return probe_url
    bin_dir = _binaries()
    as_root = os.geteuid() == 0
    if as_root:
        # initdb refuses to run as root: the cluster belongs to the postgres user, in a
        # directory it can reach (pytest's tmp directories are private to root).
        data = Path(tempfile.mkdtemp(prefix="tidegate-pg-"))
        shutil.chown(data, user="postgres", group="postgres")
        (tmp_dir / _CLUSTER).write_text(str(data))
    else:
        data = tmp_dir / _CLUSTER
    port = free_port()
    log = data / "server.log"
    _run(
        [str(bin_dir / "initdb"), "-D", str(data / "db"), "-U", "postgres", "-A", "trust"],
        as_root,
    )
    _run(
        [
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data / "db"),
            "-l",
            str(log),
            "-w",
            "-o",
            f"-p {port} -h 127.0.0.1 -k {data} -c fsync=off",
            "start",
        ],
        as_root,
    )
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    try:
        wait_until(lambda: answers(url), timeout=30, interval=0.2)
    except AssertionError as exc:
        tail = log.read_text()[-2000:] if log.exists() else "(no server log)"
        raise PostgresUnavailable(f"started PostgreSQL does not answer on {url}:\n{tail}") from exc
    return url


def stop_postgres(tmp_dir: Path) -> None:
    """Stop and remove the cluster `find_or_start_postgres(tmp_dir)` started, if it did."""
    pointer = tmp_dir / _CLUSTER
    if not pointer.exists():
        return
    data = Path(pointer.read_text()) if pointer.is_file() else pointer
    as_root = pointer.is_file()
    _run([str(_binaries() / "pg_ctl"), "-D", str(data / "db"), "-m", "fast", "-w", "stop"], as_root)
    shutil.rmtree(data, ignore_errors=True)


class Databases:
    """Creates `tidegate_test_<run>_<n>` databases on one server and drops them all."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.prefix = f"tidegate_test_{uuid.uuid4().hex[:12]}"
        self._count = 0
        self._live: set[str] = set()

    def create(self) -> str:
        """A new empty database; returns its URL."""
        self._count += 1
        name = f"{self.prefix}_{self._count}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self._live.add(name)
        return urlunsplit(urlsplit(self.admin_url)._replace(path=f"/{name}"))

    def drop(self, url: str) -> None:
        name = urlsplit(url).path.lstrip("/")
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        self._live.discard(name)

    def drop_all(self) -> None:
        for name in sorted(self._live):
            self.drop(f"/{name}")


def _binaries() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found and os.geteuid() == 0 and shutil.which("apt-get"):
        _run(["apt-get", "install", "-y", "-q", "postgresql"], as_root=False)
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise PostgresUnavailable(
            "nothing answers on 127.0.0.1:5432 and no PostgreSQL binaries are installed"
            " (/usr/lib/postgresql/*/bin/initdb); install the postgresql package"
        )
    return Path(found[-1]).parent


def _run(argv: list[str], as_root: bool) -> None:
    """Run a server command, as the postgres user when we are root."""
    if as_root:
        argv = ["runuser", "-u", "postgres", "--", *argv]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300)
    if done.returncode != 0:
        output = done.stdout[-2000:] + done.stderr[-2000:]
        raise PostgresUnavailable(f"{' '.join(argv)} exited {done.returncode}:\n{output}")
