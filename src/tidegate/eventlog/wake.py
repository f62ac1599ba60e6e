"""AppendSignal: an append in one process wakes the consumers in another.

The embedded log's consumers run in one process (process 0 of `tidegate serve
--processes N`); the api processes and the CLI append to the log files from others.
Without a signal the consumers would have to poll every few milliseconds, which costs
an idle server several percent of a core. Instead the consumers' process listens on a
UNIX datagram socket beside the log (`log.db.wake`). Every other process sends it an
empty datagram after its appends commit: at once after a quiet spell, and at most one
every `interval_s` while it appends (the last of a burst is sent within `interval_s`).
The listener watches the socket only while a consumer waits (`armed`): datagrams sent
while the consumers are busy queue up and wake them at most once, when they next wait.

Losing a datagram loses no data:
- the consumers read everything after they start listening;
- a full socket queue means wake-ups are already pending;
- they still poll, now and then.

Where the socket cannot be had (a path over the 107 bytes AF_UNIX allows, or another
live process listening already), `listen` says so and the consumers poll as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path


class AppendSignal:
    def __init__(self, path: Path, *, interval_s: float) -> None:
        self.path = path
        self._interval_s = interval_s
        self._listener: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sender: socket.socket | None = None
        self._pending = False
        self._sent_at = -interval_s
        self._armed = 0

    def listen(self) -> bool:
        """Bind the socket for this process; False if it cannot (then poll). Idempotent."""
        if self._listener is not None:
            return True
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            try:
                sock.bind(str(self.path))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or _answers(self.path):
                    raise  # too long a path, or another live listener: leave it be
                self.path.unlink(missing_ok=True)  # left by a process that died
                sock.bind(str(self.path))
            os.chmod(self.path, 0o600)
        except OSError:
            sock.close()
            return False
        self._loop = asyncio.get_running_loop()
        self._listener = sock
        return True

    @contextlib.contextmanager
    def armed(self, on_signal: Callable[[], None]) -> Iterator[None]:
        """While a consumer waits: `on_signal()` when datagrams have come (those queued
        since the last wait at once)."""
        sock, loop = self._listener, self._loop
        if sock is None or loop is None:
            yield
            return
        self._armed += 1
        if self._armed == 1:
            loop.add_reader(sock.fileno(), _drain, sock, on_signal)
        try:
            yield
        finally:
            self._armed -= 1
            if self._armed == 0 and self._listener is sock and not loop.is_closed():
                loop.remove_reader(sock.fileno())

    def signal_soon(self) -> None:
        """After an append has committed: wake the listener (see the module doc). A no-op
        in the listening process (its own appends wake its consumers directly)."""
        if self._listener is not None or self._pending:
            return
        self._pending = True  # a datagram is due: it goes after this append
        loop = asyncio.get_running_loop()
        wait = self._sent_at + self._interval_s - loop.time()
        if wait > 0:
            loop.call_later(wait, self._send, loop)
        else:
            loop.call_soon(self._send, loop)

    def _send(self, loop: asyncio.AbstractEventLoop) -> None:
        self._pending = False
        self._sent_at = loop.time()
        if self._sender is None:
            self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sender.setblocking(False)
        # No listener (not started yet, or gone), a path too long, or a full queue (wake-
        # ups are pending there already): the consumers find the records all the same.
        with contextlib.suppress(OSError):
            self._sender.sendto(b"", str(self.path))

    def close(self) -> None:
        if self._listener is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
            self.path.unlink(missing_ok=True)
        if self._sender is not None:
            self._sender.close()
            self._sender = None


def _drain(sock: socket.socket, on_signal: Callable[[], None]) -> None:
    with contextlib.suppress(OSError):  # BlockingIOError once the queue is empty
        while True:
            sock.recv(16)
    on_signal()


def _answers(path: Path) -> bool:
    """Whether a live socket is bound at `path` (a dead one's file refuses)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    else:
        return True
    finally:
        probe.close()
