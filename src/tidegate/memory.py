"""Freed heap memory back to the operating system, where the C library can do it.

glibc's `free` gives memory back only from the top of a heap; what is freed below a
block still in use stays in the process, counted in its RSS, until reused. After a
burst of allocations is freed (a flush of dedupe claims: a dozen MB of keys), the
RSS would keep the burst's high-water mark. `malloc_trim(0)` returns the free pages
of every heap (a few milliseconds; the GIL is released meanwhile, as for any foreign
call). CPython's own small-object arenas are returned when empty, without it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    # glibc only: musl and the BSDs' and macOS's libc have no malloc_trim
    function = getattr(libc, "malloc_trim", None)
    if function is None:
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function  # type: ignore[no-any-return]


_TRIM = _malloc_trim()


def trim() -> bool:
    """Give the heaps' free pages back to the system; whether there was anything to give
    (False also where the C library has no way to do it)."""
    return _TRIM is not None and _TRIM(0) == 1
