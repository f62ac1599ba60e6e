"""Logs never carry payloads or secrets, whatever a call site passes."""

from __future__ import annotations

import io
import json
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
