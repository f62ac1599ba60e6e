"""The processes the benchmark starts: Tidegate, the webhook receiver, the baseline app,
and nginx (when installed) as the machine's HTTP ceiling.

Each runs in its own process on 127.0.0.1 with its output in a log file, and is
stopped by its own pid (SIGTERM, then SIGKILL after a bounded wait).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import requests

BENCH_DIR = Path(__file__).resolve().parent


@dataclass
class Service:
    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    log_path: Path
    ready_path: str
    proc: subprocess.Popen[bytes] | None = None
    exit_code: int | None = None
    stop_s: float | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> Service:
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv, env=self.env, stdout=self._log, stderr=subprocess.STDOUT
        )
        return self

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start:\n{self.log_tail()}")
            try:
                if requests.get(self.base + self.ready_path, timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready within {timeout_s}s:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, wait up to `timeout_s`, then SIGKILL. Records exit code and stop time."""
        if self.proc is None:
            return None
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.stop_s = round(time.monotonic() - started, 2)
        self.exit_code = self.proc.returncode
        if self._log is not None:
            self._log.close()
        return self.exit_code

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""


def tidegate(
    data_dir: Path,
    port: int,
    log_dir: Path,
    extra_env: dict[str, str] | None = None,
    *,
    processes: int = 1,
) -> Service:
    """`tidegate serve --processes N` on the embedded default, or on the engine
    `extra_env` names (TIDEGATE_STORE_URL, TIDEGATE_LOG_URL). Engine variables of the
    calling environment are not inherited: the engine is the one the run names."""
    inherited = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TIDEGATE_STORE_URL", "TIDEGATE_LOG_URL", "TIDEGATE_PROCESSES")
    }
    env = {
        **inherited,
        "TIDEGATE_DATA_DIR": str(data_dir),
        "TIDEGATE_PORT": str(port),
        "TIDEGATE_REGION": "eu",
        "TIDEGATE_SSRF_ALLOW_CIDRS": "127.0.0.1/32",
        # the receiver is plain http on 127.0.0.1, as in tests/support.py
        "TIDEGATE_HTTPS_ONLY": "false",
        "TIDEGATE_LOG_LEVEL": "warning",
        "TIDEGATE_LOG_FORMAT": "json",
        **(extra_env or {}),
    }
    return Service(
        "tidegate",
        [sys.executable, "-m", "tidegate", "serve", "--processes", str(processes)],
        env,
        port,
        log_dir / "tidegate.log",
        "/readyz",
    )


def receiver(port: int, log_dir: Path) -> Service:
    return Service(
        "receiver",
        [
            sys.executable,
            str(BENCH_DIR / "receiver.py"),
            "--port",
            str(port),
            "--out",
            str(log_dir / "receiver.json"),
        ],
        dict(os.environ),
        port,
        log_dir / "receiver.log",
        "/stats",
    )


def baseline(port: int, log_dir: Path, *, workers: int = 1) -> Service:
    return Service(
        "baseline",
        [
            sys.executable,
            str(BENCH_DIR / "baseline_app.py"),
            "--port",
            str(port),
            "--workers",
            str(workers),
        ],
        dict(os.environ),
        port,
        log_dir / "baseline.log",
        "/",
    )


# nginx answering the track endpoint's acknowledgement itself: what HTTP on this machine
# can do with no application behind it. `worker_processes auto` is one per core, nginx's
# own advice; keepalive_requests is raised so a closed loop keeps its connections.
_NGINX_CONF = """\
worker_processes auto;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type application/json;
            return 200 '{{"success":true}}';
        }}
    }}
}}
"""


def nginx_executable() -> str | None:
    """nginx on PATH, or where Debian and source builds put it (sbin is not on a user's
    PATH)."""
    found = shutil.which("nginx")
    if found:
        return found
    for candidate in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def nginx(executable: str, port: int, log_dir: Path) -> Service:
    """nginx in the foreground with a configuration of its own under `log_dir`."""
    prefix = log_dir / "nginx"
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(_NGINX_CONF.format(prefix=prefix, port=port))
    return Service(
        "nginx",
        # -e: the error log before the configuration is read (the default path under
        # /var/log may not be writable)
        [executable, "-p", str(prefix), "-e", "stderr", "-c", str(conf), "-g", "daemon off;"],
        dict(os.environ),
        port,
        log_dir / "nginx.log",
        "/",
    )


def cli(service: Service, *args: str) -> Any:
    """`python -m tidegate ARGS --json` against the server's data dir; the parsed output."""
    done = subprocess.run(
        [sys.executable, "-m", "tidegate", *args, "--json"],
        env=service.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"tidegate {' '.join(args)} failed ({done.returncode}): {done.stderr}")
    return json.loads(done.stdout)


@dataclass(frozen=True)
class Tenant:
    id: str
    write_key: str
    api_key: str
    destination_id: str | None = None
    destination_secret: str | None = None


def create_tenant(service: Service, name: str, destination_url: str | None) -> Tenant:
    tenant = cli(service, "tenants", "create", name, "--region", "eu")
    source = cli(service, "sources", "create", "--tenant", tenant["id"])
    api_key = cli(service, "apikeys", "create", "--tenant", tenant["id"])
    destination: dict[str, Any] = {}
    if destination_url is not None:
        destination = cli(
            service, "destinations", "create", "--tenant", tenant["id"], "--url", destination_url
        )
    return Tenant(
        tenant["id"],
        source["write_key"],
        api_key["api_key"],
        destination.get("id"),
        destination.get("secret"),
    )


def log_problems(service: Service, limit: int = 20) -> dict[str, Any]:
    """Counts of warning/error lines in a JSON log, with the first few distinct events."""
    counts: dict[str, int] = {}
    samples: list[str] = []
    seen: set[str] = set()
    other = 0
    try:
        lines = service.log_path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        lines = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            if line.strip():
                other += 1
                if len(samples) < limit and line[:200] not in seen:
                    seen.add(line[:200])
                    samples.append(line[:300])
            continue
        if not isinstance(entry, dict):
            continue
        level = str(entry.get("level", "?"))
        counts[level] = counts.get(level, 0) + 1
        key = f"{level}:{entry.get('event')}"
        if key not in seen and len(samples) < limit:
            seen.add(key)
            samples.append(line[:300])
    return {"by_level": counts, "non_json_lines": other, "samples": samples}
