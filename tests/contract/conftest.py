"""Engine fixtures for the contract suites: every test runs unchanged on every engine.

A new engine is one more entry in ENGINES (PostgreSQL and Kafka arrive with the
production-engines issue).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tidegate.eventlog import EventLog, open_event_log
from tidegate.store import Store, open_store

LOG_ENGINES = ["sqlite"]
STORE_ENGINES = ["sqlite"]


def log_url(engine: str, tmp_path: Path) -> str:
    assert engine == "sqlite", engine
    return f"sqlite:///{tmp_path}/log.db"


def store_url(engine: str, tmp_path: Path) -> str:
    assert engine == "sqlite", engine
    return f"sqlite:///{tmp_path}/store.db"


@pytest.fixture(params=LOG_ENGINES)
async def log_factory(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[object]:
    """Opens logs on one engine location, so a test can 'restart' by opening again."""
    opened: list[EventLog] = []
    url = log_url(request.param, tmp_path)

    def open_log() -> EventLog:
        log = open_event_log(url)
        opened.append(log)
        return log

    yield open_log
    for log in opened:
        await log.aclose()


@pytest.fixture(params=STORE_ENGINES)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s = open_store(store_url(request.param, tmp_path))
    yield s
    await s.aclose()
