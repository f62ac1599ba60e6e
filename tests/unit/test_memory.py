"""tidegate.memory: freed heap memory back to the system (glibc's malloc_trim)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

_PROGRAM = """
import os, sys
from tidegate import memory

def rss_kib():
    with open(f"/proc/{os.getpid()}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

# 40 MB in blocks too big for CPython's own allocator (over 512 bytes), so malloc's;
# the last block allocated stays, so that plain free cannot shrink the heap from its top.
blocks = [bytes(1_000) + i.to_bytes(4, "big") for i in range(40_000)]
keep = blocks[-1]
del blocks
before = rss_kib()
trimmed = memory.trim()
print(trimmed, before, rss_kib())
"""


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="malloc_trim is glibc's",
)
def test_trim_returns_the_pages_a_burst_of_allocations_freed() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROGRAM],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONMALLOC": "pymalloc"},
    ).stdout.split()
    trimmed, before_kib, after_kib = out[0], int(out[1]), int(out[2])
    assert trimmed == "True"
    assert before_kib - after_kib > 20_000, (before_kib, after_kib)
