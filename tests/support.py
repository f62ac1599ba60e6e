"""Test harness: `tidegate serve` as a real process, a real webhook receiver, the real CLI."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import requests

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def thread_nices(pid: int) -> dict[int, int]:
    """The nice value of each thread of `pid`, by thread id (field 19 of its stat)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        stat = (task / "stat").read_text()
        out[int(task.name)] = int(stat[stat.rindex(")") + 2 :].split()[16])
    return out


def is_alive(pid: int) -> bool:
    """Whether process `pid` runs; a zombie (exited, not yet reaped) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.02) -> T:
    """Poll `predicate` until it returns something truthy; fail with a clear message."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A real HTTP server that records webhook deliveries.

    Behaviour per path: a list of statuses to answer in turn (the last repeats),
    "hang" to hold the request until the receiver stops, "slow:S" to answer 200
    after S seconds, or "busy:N:S" to answer 429 at once while N requests to the path
    are in flight already, else 200 after S seconds. `peak` holds the most requests in
    flight at once per path.
    """

    behaviour: dict[str, list[int | str]] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    headers_out: dict[str, dict[str, str]] = field(default_factory=dict)
    in_flight: dict[str, int] = field(default_factory=dict)
    peak: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                path = self.path
                with receiver._lock:
                    receiver.received.append(
                        Received(
                            path,
                            {k.lower(): v for k, v in self.headers.items()},
                            body,
                            time.monotonic(),
                        )
                    )
                    plan = receiver.behaviour.get(path, [200])
                    action = plan.pop(0) if len(plan) > 1 else plan[0]
                    busy = receiver.in_flight.get(path, 0)
                    if isinstance(action, str) and action.startswith("busy:"):
                        most, seconds = action.removeprefix("busy:").split(":")
                        action = 429 if busy >= int(most) else f"slow:{seconds}"
                    receiver.in_flight[path] = busy + 1
                    receiver.peak[path] = max(receiver.peak.get(path, 0), busy + 1)
                try:
                    if action == "hang":
                        receiver._stop.wait(60)
                        return
                    if isinstance(action, str) and action.startswith("slow:"):
                        receiver._stop.wait(float(action.removeprefix("slow:")))
                        action = 200
                finally:
                    # before the answer goes out: the sender may send its next at once
                    with receiver._lock:
                        receiver.in_flight[path] -= 1
                status = int(action)
                self.send_response(status)
                for k, v in receiver.headers_out.get(path, {}).items():
                    self.send_header(k, v)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def on(self, path: str, *plan: int | str) -> str:
        with self._lock:
            self.behaviour[path] = list(plan)
        return self.url(path)

    def at(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == path]

    def close(self) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()


class Tidegate:
    """`tidegate serve` in a subprocess, sharing a data dir with CLI calls."""

    def __init__(
        self, data_dir: Path, *, region: str = "eu", extra_env: dict[str, str] | None = None
    ) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.env = {
            **os.environ,
            "TIDEGATE_DATA_DIR": str(data_dir),
            "TIDEGATE_REGION": region,
            "TIDEGATE_SSRF_ALLOW_CIDRS": "127.0.0.1/32",
            "TIDEGATE_HTTPS_ONLY": "false",
            "TIDEGATE_PORT": str(self.port),
            "TIDEGATE_LOG_FORMAT": "json",
            **(extra_env or {}),
        }
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / f"serve-{self.port}.log"

    def start(self, *args: str) -> Tidegate:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tidegate", "serve", *args],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        wait_until(self._ready, timeout=30)
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"tidegate serve exited: {self.log_path.read_text()[-3000:]}")
        try:
            return requests.get(self.base + "/readyz", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self._log.close()
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def logs(self) -> str:
        return self.log_path.read_text()

    def cli(self, *args: str, check: bool = True) -> Any:
        """Run `tidegate ARGS --json` against the same data dir; parsed JSON output."""
        done = subprocess.run(
            [sys.executable, "-m", "tidegate", *args, "--json"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"tidegate {' '.join(args)} failed: {done.stderr}")
        return json.loads(done.stdout) if done.returncode == 0 else done

    def tenant(self, region: str = "eu") -> TenantHandle:
        tenant = self.cli("tenants", "create", f"t-{time.monotonic_ns()}", "--region", region)
        source = self.cli("sources", "create", "--tenant", tenant["id"])
        api_key = self.cli("apikeys", "create", "--tenant", tenant["id"])["api_key"]
        return TenantHandle(self, tenant["id"], source["write_key"], api_key)


@dataclass
class TenantHandle:
    tg: Tidegate
    id: str
    write_key: str
    api_key: str

    def destination(self, url: str, *extra: str) -> dict[str, Any]:
        result: dict[str, Any] = self.tg.cli(
            "destinations", "create", "--tenant", self.id, "--url", url, *extra
        )
        return result

    def track(self, event: str = "Order Completed", **fields: Any) -> requests.Response:
        body = {"userId": "u1", "event": event, **fields}
        return requests.post(
            self.tg.base + "/v1/track", json=body, auth=(self.write_key, ""), timeout=10
        )

    def call(self, method: str, path: str, body: Any = None) -> requests.Response:
        """`method path` with the tenant's API key, `body` as JSON."""
        return requests.request(
            method,
            self.tg.base + path,
            json=body,
            headers={"authorization": f"Bearer {self.api_key}"},
            timeout=10,
        )

    def get(self, path: str, **params: Any) -> requests.Response:
        return requests.get(
            self.tg.base + path,
            params=params,
            headers={"authorization": f"Bearer {self.api_key}"},
            timeout=10,
        )
