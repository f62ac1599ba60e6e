"""Settings that change behaviour: roles, HTTPS-only destinations, file permissions."""

from __future__ import annotations

import socket
import stat
import time

import requests

from tests.support import Tidegate


def test_https_only_is_the_default(fresh_dir) -> None:  # type: ignore[no-untyped-def]
    tg = Tidegate(fresh_dir)
    t = tg.cli("tenants", "create", "x", "--region", "eu")
    tg.env.pop("TIDEGATE_HTTPS_ONLY")
    done = tg.cli("destinations", "create", "--tenant", t["id"], "--url", "http://127.0.0.1:9/x",
                  check=False)  # fmt: skip
    assert done.returncode == 1 and "https" in done.stderr.lower(), done.stderr


def test_database_files_are_private(fresh_dir) -> None:  # type: ignore[no-untyped-def]
    tg = Tidegate(fresh_dir)
    tg.cli("tenants", "create", "x", "--region", "eu")
    for name in ("store.db", "store.audit.db", "master.key"):
        assert stat.S_IMODE((fresh_dir / name).stat().st_mode) == 0o600, name


def test_worker_only_process_serves_no_api(fresh_dir) -> None:  # type: ignore[no-untyped-def]
    tg = Tidegate(fresh_dir, extra_env={"TIDEGATE_ROLES": "worker"}).start()
    try:
        assert requests.post(tg.base + "/v1/track", json={}, timeout=5).status_code == 404
        assert requests.get(tg.base + "/readyz", timeout=5).status_code == 200
    finally:
        assert tg.stop() == 0


def _idle_then_ask_again(base_port: int, idle_s: float) -> bytes:
    """A keep-alive connection: one request, `idle_s` of silence, then a second request;
    what the server sent back after the silence (b"" once it has closed the connection)."""
    request = b"GET /livez HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"
    with socket.create_connection(("127.0.0.1", base_port), timeout=5) as sock:
        sock.sendall(request)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        time.sleep(idle_s)
        try:
            sock.sendall(request)
            return sock.recv(65536)
        except ConnectionError:
            return b""


def test_idle_connections_are_kept_past_a_load_balancers_timeout(fresh_dir) -> None:  # type: ignore[no-untyped-def]
    """uvicorn's own default closes an idle connection after 5 s; a load balancer or an
    SDK reusing it then races the close. Tidegate keeps it for TIDEGATE_KEEP_ALIVE_S
    (75 s by default), and closes it after that."""
    kept = Tidegate(fresh_dir).start()
    try:
        assert _idle_then_ask_again(kept.port, 6.0).startswith(b"HTTP/1.1 200")
    finally:
        assert kept.stop() == 0
    short = Tidegate(fresh_dir, extra_env={"TIDEGATE_KEEP_ALIVE_S": "1"}).start()
    try:
        assert _idle_then_ask_again(short.port, 2.5) == b""
    finally:
        assert short.stop() == 0
