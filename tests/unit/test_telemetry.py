"""Logs never carry payloads or secrets, whatever a call site passes; metrics of several
processes add up."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import structlog

from tidegate.telemetry import configure_logging, redact


def test_redact_masks_known_secret_and_payload_keys() -> None:
    event = {"event": "x", "write_key": "wk_1", "payload": {"a": 1}, "authorization": "Basic"}
    out = redact(None, "info", dict(event))
    assert out["write_key"] == out["payload"] == out["authorization"] == "[REDACTED]"
    assert out["event"] == "x"


def test_configured_json_logs_are_redacted(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    buffer = io.StringIO()
    monkeypatch.setattr(sys, "stdout", buffer)
    configure_logging("json", "info")
    try:
        structlog.get_logger("t").info("ingest.test", secret="whsec_abc", tenant_id="ten_1")
    finally:
        structlog.reset_defaults()
    line = json.loads(buffer.getvalue().strip().splitlines()[-1])
    assert line["secret"] == "[REDACTED]" and line["tenant_id"] == "ten_1"
    assert "whsec_abc" not in buffer.getvalue()


_MULTIPROCESS_SCRIPT = """
import os
from tidegate import telemetry

telemetry.INGESTED.labels("track").inc(3)
child = os.fork()
if child == 0:
    telemetry.INGESTED.labels("track").inc(5)
    os._exit(0)
os.waitpid(child, 0)
telemetry.INGESTED.labels("track").inc(1)
print(os.getpid(), child)
"""


def test_multiprocess_metrics_keep_a_file_per_process_across_a_fork(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The pid the metrics check is kept in memory, not asked of the kernel each time: a
    forked child must still count in a file of its own, and /metrics sum them all."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", _MULTIPROCESS_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    parent, child = out[0], out[1]
    files = {p.name for p in tmp_path.iterdir()}
    assert {f"counter_{parent}.db", f"counter_{child}.db"} <= files
    assert {name.rsplit("_", 1)[1] for name in files} == {f"{parent}.db", f"{child}.db"}
    scraped = subprocess.run(
        [
            sys.executable,
            "-c",
            "from prometheus_client import generate_latest\n"
            "from tidegate.telemetry import metrics_registry\n"
            "print(generate_latest(metrics_registry()).decode())",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert 'tidegate_events_ingested_total{kind="track"} 9.0' in scraped
