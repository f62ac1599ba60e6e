"""Settings that change behaviour: roles, HTTPS-only destinations, file permissions."""

from __future__ import annotations

import stat

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
    for name in ("store.db", "master.key"):
        assert stat.S_IMODE((fresh_dir / name).stat().st_mode) == 0o600, name


def test_worker_only_process_serves_no_api(fresh_dir) -> None:  # type: ignore[no-untyped-def]
    tg = Tidegate(fresh_dir, extra_env={"TIDEGATE_ROLES": "worker"}).start()
    try:
        assert requests.post(tg.base + "/v1/track", json={}, timeout=5).status_code == 404
        assert requests.get(tg.base + "/readyz", timeout=5).status_code == 200
    finally:
        assert tg.stop() == 0
