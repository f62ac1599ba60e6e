"""`tidegate serve --processes N`: one port, N processes.

Process 0 (the one started by hand) runs the worker role; it starts N-1 processes
running the api role, which listen on the port with SO_REUSEPORT, so the kernel spreads
connections across them. Process 0 holds the port bound but does not listen: routing and
delivery get its core to themselves. On the embedded engine each api process appends to
a log partition file of its own (eventlog/sqlite.py); the worker in process 0 routes
them all.

Process 0 restarts an api process that dies, stops them all (SIGTERM, then their own
drain) when it is stopped, and they stop by themselves if process 0 dies: each watches a
pipe whose other end only process 0 holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence

import structlog

from tidegate.settings import Settings

log = structlog.get_logger(__name__)
_RESTART_DELAY_S = 1.0
_STOP_TIMEOUT_S = 30.0


def port_holder(host: str, port: int) -> socket.socket:
    """The port, bound with SO_REUSEPORT but not listening: no connection comes to it, and
    no other program can take the port while the api processes start (port 0: the one
    the kernel picked)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def listening_socket(host: str, port: int) -> socket.socket:
    """A listening socket on a port other processes of this user listen on too
    (SO_REUSEPORT): the kernel spreads connections across them by a hash."""
    sock = port_holder(host, port)
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class ApiProcesses:
    """Processes 1..N-1 of `serve --processes N`, kept running until `stop()`.

    Each process has a watcher task that starts it and starts it again when it dies;
    `stop()` ends the watchers before it signals, so a process being started when the
    stop comes is signalled with the others, or closed by the event loop before it is
    recorded (and exits with the lifeline in any case).
    """

    def __init__(
        self,
        settings: Settings,
        port: int,
        *,
        command: Sequence[str] = (sys.executable, "-m", "tidegate", "serve"),
        restart_delay_s: float = _RESTART_DELAY_S,
        stop_timeout_s: float = _STOP_TIMEOUT_S,
    ) -> None:
        self._settings = settings
        self._port = port
        self._command = tuple(command)
        self._restart_delay_s = restart_delay_s
        self._stop_timeout_s = stop_timeout_s
        self._lifeline_r, self._lifeline_w = os.pipe()  # closes when this process dies
        self._children: dict[int, asyncio.subprocess.Process] = {}
        self._watchers: list[asyncio.Task[None]] = []
        self._stopping = False

    def pids(self) -> dict[int, int]:
        """The pid of each api process started last, by process index."""
        return {index: child.pid for index, child in self._children.items()}

    async def start(self) -> None:
        for index in range(1, self._settings.processes):
            await self._spawn(index)
            self._watchers.append(asyncio.create_task(self._watch(index)))
        log.info("serve.processes_started", processes=self._settings.processes, port=self._port)

    async def _spawn(self, index: int) -> None:
        env = {
            **os.environ,
            "TIDEGATE_ROLES": "api",
            "TIDEGATE_PROCESSES": str(self._settings.processes),
            "TIDEGATE_PROCESS_INDEX": str(index),
            "TIDEGATE_HOST": self._settings.host,
            "TIDEGATE_PORT": str(self._port),
        }
        self._children[index] = await asyncio.create_subprocess_exec(
            *self._command,
            "--lifeline-fd",
            str(self._lifeline_r),
            env=env,
            pass_fds=(self._lifeline_r,),
            # Not in this terminal's process group: Ctrl-C reaches process 0 only, which
            # then stops each api process once (a second signal would skip its drain).
            # A process group of its own, in process 0's session: Linux's scheduler
            # autogroups (on by default on many distributions) share the CPU equally
            # between sessions, and a session per api process gave each of them as much
            # CPU as process 0's worker and everything else in its session together.
            # (uvloop takes no `process_group`; setpgid is one system call, safe after fork.)
            preexec_fn=os.setpgrp,
        )

    async def _watch(self, index: int) -> None:
        while True:
            code = await self._children[index].wait()
            if self._stopping:
                return
            log.error("serve.process_exited", process=index, exit_code=code)
            await asyncio.sleep(self._restart_delay_s)
            if self._stopping:
                return
            await self._spawn(index)

    async def stop(self) -> None:
        """SIGTERM each api process; each drains its requests and exits."""
        self._stopping = True
        # First the watchers: one may be starting a replacement (its process created, not
        # yet recorded), which the signals below would miss and the waits would then
        # wait out. Cancelled there, the half-started process is closed by the event loop,
        # and in any case exits when the lifeline below closes, as every api process does.
        for watcher in self._watchers:
            watcher.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        for child in self._children.values():
            if child.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signal.SIGTERM)
        for index, child in self._children.items():
            try:
                code = await asyncio.wait_for(child.wait(), self._stop_timeout_s)
            except TimeoutError:
                log.error("serve.process_killed", process=index)
                child.kill()
                code = await child.wait()
            if code != 0:
                log.warning("serve.process_stopped", process=index, exit_code=code)
        os.close(self._lifeline_r)
        os.close(self._lifeline_w)


def on_lifeline_closed(fd: int, stop: Callable[[], object]) -> None:
    """Call `stop()` when the pipe from process 0 closes (process 0 is gone)."""
    loop = asyncio.get_running_loop()

    def readable() -> None:
        if not os.read(fd, 1):
            loop.remove_reader(fd)
            log.error("serve.process_0_gone")
            stop()

    loop.add_reader(fd, readable)
