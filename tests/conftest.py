"""Session fixtures: one shared `tidegate serve` and one webhook receiver.

Tests isolate themselves by creating their own tenants; tests that crash or stop
a server start their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Receiver, Tidegate


@pytest.fixture(scope="session")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="session")
def tidegate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tidegate]:
    tg = Tidegate(tmp_path_factory.mktemp("shared") / "data").start()
    yield tg
    assert tg.stop() == 0, tg.logs()[-3000:]


@pytest.fixture
def fresh_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"
