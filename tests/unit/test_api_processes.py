"""Process 0's keeper of the api processes: a stop that comes while a dead process is
being replaced stops every process, the replacement included, promptly.

The children are real processes: a small Python program standing in for `tidegate
serve`, which exits 0 on SIGTERM like a drained api process.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import time
from pathlib import Path

from tests.support import is_alive
from tidegate.cli.common import load_settings
from tidegate.cli.processes import ApiProcesses

_CHILD = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    time.sleep(1)
"""


async def test_a_stop_during_a_replacement_stops_every_process_promptly(tmp_path: Path) -> None:
    child = tmp_path / "child.py"
    child.write_text(_CHILD)
    settings = load_settings(data_dir=tmp_path, processes=3)
    # Many rounds, each stopping at a different moment of the replacement (here it is
    # created 1-8 ms after the kill): before it, while it is created, after. Before the
    # watchers were ended first, a replacement created while the stop was signalling went
    # unsignalled and was then waited on for the whole stop timeout; that window is a
    # loop iteration or two, which these rounds hit only by chance.
    for _ in range(12):
        keeper = ApiProcesses(
            settings,
            port=0,
            command=(sys.executable, str(child)),
            restart_delay_s=0.0,
            stop_timeout_s=5.0,
        )
        await keeper.start()
        first = keeper.pids()
        # The last one: the stop waits for the processes in order, so a replacement
        # recorded while it waits for the first is waited for without being signalled.
        os.kill(first[2], signal.SIGKILL)
        await asyncio.sleep(random.uniform(0.0, 0.015))  # noqa: S311 - a timing, not a secret
        started = time.monotonic()
        await keeper.stop()
        took = time.monotonic() - started
        assert took < 3.0, f"stop took {took:.1f}s: a process went unsignalled"
        for pid in {*first.values(), *keeper.pids().values()}:
            assert not is_alive(pid), pid
