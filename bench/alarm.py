"""Waking up at a `time.perf_counter()` time, to the tens of µs, for the open loops.

uvloop's timers, and so `asyncio.sleep`, count whole milliseconds: a sleep of 0.4 ms
returns at once, one of 1.6 ms after 2 ms. An open loop sleeping until each request's
intended send time therefore either spins until it comes (a full core of CPU, as the
aiohttp generator did between requests less than a millisecond apart) or sends up to a
millisecond late, which its latencies, timed from the intended time, would include.

On Linux, `Alarm` arms a timerfd on CLOCK_MONOTONIC (the clock of time.perf_counter)
for the exact time and waits for the event loop to see it readable: one wake-up, some
20-50 µs late. Elsewhere it sleeps with asyncio.sleep, at least a millisecond at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import sys
import time
from collections.abc import Callable

_CLOCK_MONOTONIC = 1
_TFD_TIMER_ABSTIME = 1
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = os.O_CLOEXEC
_FALLBACK_MIN_SLEEP_S = 0.001


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


class _Itimerspec(ctypes.Structure):
    _fields_ = (("it_interval", _Timespec), ("it_value", _Timespec))


def _libc() -> ctypes.CDLL | None:
    """The C library, if it has timerfd and perf_counter reads CLOCK_MONOTONIC."""
    if not sys.platform.startswith("linux"):
        return None
    if "CLOCK_MONOTONIC" not in time.get_clock_info("perf_counter").implementation:
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.timerfd_create.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.timerfd_settime.argtypes = (
            ctypes.c_int,
            ctypes.c_int,
            ctypes.POINTER(_Itimerspec),
            ctypes.c_void_p,
        )
    except (OSError, AttributeError):
        return None
    return libc


class Alarm:
    """`alarm.call_at(when, callback)`: call `callback()` once time.perf_counter() reaches
    `when`. One pending call at a time (a new one replaces it); `close` (or leaving
    `with`) cancels it and releases the timerfd."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._callback: Callable[[], None] | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._fd = -1
        libc = _libc()
        if libc is not None:
            fd = int(libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC))
            if fd >= 0:
                self._fd = fd
                self._settime = libc.timerfd_settime
                self._spec = _Itimerspec()
                self._spec_ref = ctypes.byref(self._spec)
                self._loop.add_reader(fd, self._fired)

    @property
    def precise(self) -> bool:
        """Whether a timerfd is in use (else the loop's timers, to the millisecond)."""
        return self._fd >= 0

    def call_at(self, when: float, callback: Callable[[], None]) -> None:
        self._callback = callback
        if self._fd < 0:
            if self._handle is not None:
                self._handle.cancel()
            delay = max(when - time.perf_counter(), _FALLBACK_MIN_SLEEP_S)
            self._handle = self._loop.call_later(delay, self._fired)
            return
        seconds = int(when)
        self._spec.it_value.tv_sec = seconds
        self._spec.it_value.tv_nsec = max(1, int((when - seconds) * 1e9))  # 0 would disarm
        if self._settime(self._fd, _TFD_TIMER_ABSTIME, self._spec_ref, None) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"timerfd_settime: {os.strerror(errno)}")

    def _fired(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(BlockingIOError):
                os.read(self._fd, 8)
        self._handle = None
        callback, self._callback = self._callback, None
        if callback is not None:
            callback()

    def close(self) -> None:
        self._callback = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Alarm:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
