"""Webhook delivery over libcurl (pycurl's multi interface on the event loop), signed per
Standard Webhooks.

One `CurlMulti` runs every attempt: its timer callback is the event loop's `call_later`,
and on Linux its sockets sit in an epoll set of the sender's own, which the loop watches
as one descriptor (elsewhere, the loop's `add_reader`/`add_writer`), so transfers make
progress as the loop turns. Its connection cache keeps connections alive between
attempts, and their sockets stay in the set between transfers. libcurl's request path
costs about 30 µs of CPU per webhook here against about 70 for aiohttp's
(docs/benchmarks.md, sixth and eighth sessions; ADR 0012).

Redirects are not followed (a 3xx is a failure). Proxies named by the environment are
not used. Every request's host is checked by the SSRF policy: IP literals before the
request, and each address libcurl is about to connect to (a name resolved by libcurl)
in its open-socket callback, which refuses a blocked one before any connection is made:
the connection only ever goes to a checked address. HTTPS verifies the peer against the
system's CA certificates (Python's `ssl` default paths), not the wheel's built-in path.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import socket
import ssl
import time
from datetime import UTC, datetime
from ipaddress import ip_address
from typing import Any

import pycurl

from tidegate.destinations.base import Outcome
from tidegate.errors import UnsafeUrl
from tidegate.model import Destination
from tidegate.pipeline.retry import parse_retry_after
from tidegate.security import signing
from tidegate.security.ssrf import SsrfPolicy

USER_AGENT = "Tidegate-Webhooks/0.1"
_RETRY_AFTER = b"retry-after:"
_POLL_BOTH = pycurl.POLL_IN | pycurl.POLL_OUT
# What is read of a response body, which nothing looks at: an endpoint answering with an
# endless body ends the transfer here, with its status kept, not at the timeout.
_BODY_KEPT = 64 * 1024


def _ca_options() -> list[tuple[int, str]]:
    """CAINFO/CAPATH from the system's OpenSSL defaults, where they exist."""
    paths = ssl.get_default_verify_paths()
    options = []
    if paths.cafile and os.path.exists(paths.cafile):
        options.append((pycurl.CAINFO, paths.cafile))
    if paths.capath and os.path.isdir(paths.capath):
        options.append((pycurl.CAPATH, paths.capath))
    return options


class _Transfer:
    """One reusable easy handle and the attempt it is running."""

    __slots__ = ("blocked", "body_bytes", "curl", "future", "retry_after")

    def __init__(self, policy: SsrfPolicy, ca: list[tuple[int, str]]) -> None:
        self.curl = pycurl.Curl()
        self.future: asyncio.Future[int] | None = None
        self.blocked: str | None = None
        self.retry_after: str | None = None
        self.body_bytes = 0
        curl = self.curl
        curl.setopt(pycurl.NOSIGNAL, 1)
        curl.setopt(pycurl.PROXY, "")  # "" overrides http_proxy and friends
        curl.setopt(pycurl.FOLLOWLOCATION, 0)
        curl.setopt(pycurl.USERAGENT, USER_AGENT)
        curl.setopt(pycurl.WRITEFUNCTION, self._body)
        curl.setopt(pycurl.HEADERFUNCTION, self._header)
        for option, value in ca:
            curl.setopt(option, value)

        def open_socket(_purpose: int, address: Any) -> Any:
            try:
                policy.check_ip(ip_address(str(address.addr[0]).partition("%")[0]))
            except UnsafeUrl as exc:
                self.blocked = self.blocked or exc.detail
                return pycurl.SOCKET_BAD
            except (ValueError, IndexError, TypeError):  # not an IP address: not checked
                self.blocked = self.blocked or "destination address could not be checked"
                return pycurl.SOCKET_BAD
            return socket.socket(address.family, address.socktype, address.protocol)

        curl.setopt(pycurl.OPENSOCKETFUNCTION, open_socket)

    def _body(self, data: bytes) -> int | None:
        """Count the body and drop it; past _BODY_KEPT, stop the transfer (0: an error
        libcurl reports as a write error, which `send` reads as the status received)."""
        self.body_bytes += len(data)
        return 0 if self.body_bytes > _BODY_KEPT else None

    def _header(self, line: bytes) -> None:
        if line[:12].lower() == _RETRY_AFTER:
            self.retry_after = line[12:].decode("latin-1").strip()


class WebhookSender:
    def __init__(
        self,
        policy: SsrfPolicy,
        *,
        default_timeout_s: float,
        limit: int = 1024,
        nested_poll: bool = True,
    ) -> None:
        self._policy = policy
        self._default_timeout_s = default_timeout_s
        self._ca = _ca_options()
        self._multi = pycurl.CurlMulti()
        self._multi.setopt(pycurl.M_SOCKETFUNCTION, self._on_socket)
        self._multi.setopt(pycurl.M_TIMERFUNCTION, self._on_timer)
        self._multi.setopt(pycurl.M_MAX_TOTAL_CONNECTIONS, limit)
        self._multi.setopt(pycurl.M_MAXCONNECTS, limit)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._idle: list[_Transfer] = []
        self._running: dict[pycurl.Curl, _Transfer] = {}
        self._closed = False
        # libcurl's sockets in an epoll set of their own (Linux), watched by the event
        # loop as one descriptor; see `_on_socket`. Elsewhere, the loop's own watchers.
        self._nested = nested_poll and hasattr(select, "epoll")
        self._epoll: select.epoll | None = None
        self._wanted: dict[int, int] = {}  # fd -> the epoll events libcurl waits for
        self._in_set: set[int] = set()  # fds registered in `_epoll`, maybe closed since

    async def send(
        self,
        destination: Destination,
        *,
        secrets: list[str],
        webhook_id: str,
        body: bytes,
        content_type: str,
    ) -> Outcome:
        started = time.perf_counter()
        try:
            self._policy.check_url(destination.url)
        except UnsafeUrl as exc:
            return Outcome(error=exc.detail, blocked=True)
        if self._closed:
            return Outcome(error="the webhook sender is closed")
        self._loop = asyncio.get_running_loop()
        signed = signing.headers(secrets, webhook_id, int(time.time()), body)
        headers = [f"{name}: {value}" for name, value in signed.items()]
        headers += [f"content-type: {content_type}", "Expect:"]  # no 100-continue round trip
        timeout_s = destination.timeout_s or self._default_timeout_s
        transfer = self._idle.pop() if self._idle else _Transfer(self._policy, self._ca)
        transfer.blocked = transfer.retry_after = None
        transfer.body_bytes = 0
        curl = transfer.curl
        curl.setopt(pycurl.URL, destination.url)
        curl.setopt(pycurl.POSTFIELDS, body)
        curl.setopt(pycurl.HTTPHEADER, headers)
        curl.setopt(pycurl.TIMEOUT_MS, max(1, int(timeout_s * 1000)))
        future: asyncio.Future[int] = self._loop.create_future()
        transfer.future = future
        self._running[curl] = transfer
        self._multi.add_handle(curl)
        try:
            await future
        except asyncio.CancelledError:
            self._finish(transfer)
            raise
        except pycurl.error as exc:
            if transfer.blocked is not None:
                return Outcome(error=transfer.blocked, blocked=True, duration_ms=_ms(started))
            code = int(exc.args[0]) if exc.args else 0
            message = str(exc.args[1]) if len(exc.args) > 1 else ""
            if code == pycurl.E_WRITE_ERROR and transfer.body_bytes > _BODY_KEPT:
                return self._answered(transfer, started)  # a long body, cut short
            if code == pycurl.E_OPERATION_TIMEDOUT:
                error = f"timed out after {timeout_s:g}s"
            else:
                error = f"{_CURL_ERRORS.get(code, 'CurlError')}: {message or code}"[:300]
            return Outcome(error=error, duration_ms=_ms(started))
        finally:
            if not self._closed:
                self._idle.append(transfer)
        return self._answered(transfer, started)

    def _answered(self, transfer: _Transfer, started: float) -> Outcome:
        status = transfer.curl.getinfo(pycurl.RESPONSE_CODE)
        header = transfer.retry_after
        return Outcome(
            status_code=status,
            retry_after_s=(
                None if header is None else parse_retry_after(header, now=datetime.now(UTC))
            ),
            duration_ms=_ms(started),
            error=None if 200 <= status < 300 else f"HTTP {status}",
        )

    # -- the multi handle on the event loop ---------------------------------------------

    def _on_socket(self, what: int, fd: int, _multi: Any, _data: Any) -> None:
        loop = self._loop
        if loop is None:
            return
        if self._nested:
            self._on_socket_nested(loop, what, fd)
            return
        if what == pycurl.POLL_REMOVE:
            loop.remove_reader(fd)
            loop.remove_writer(fd)
            return
        if what & pycurl.POLL_IN:
            loop.add_reader(fd, self._act, fd, pycurl.CSELECT_IN)
        else:
            loop.remove_reader(fd)
        if what & pycurl.POLL_OUT:
            loop.add_writer(fd, self._act, fd, pycurl.CSELECT_OUT)
        else:
            loop.remove_writer(fd)

    def _on_socket_nested(self, loop: asyncio.AbstractEventLoop, what: int, fd: int) -> None:
        """libcurl's sockets in an epoll set of the sender's own, which the event loop
        watches as one descriptor (`_on_ready`).

        Watching each socket on the loop cost every delivery about seven syscalls under
        uvloop: a new watcher per transfer (an `epoll_ctl` pair to check the descriptor,
        an `ioctl`, an `epoll_ctl` that fails, the registration) and three `epoll_ctl`
        to drop it. Here a kept-alive connection's socket stays in the set between
        transfers ("parked"): the next transfer on it costs one `epoll_ctl`, which also
        tells whether it is still the same socket. The kernel drops a socket from the
        set when it is closed, so a number libcurl reuses for a new socket is registered
        again (ENOENT, then ADD), and no other part of the process ever sees these
        descriptors watched. A parked socket that turns readable (the other end closed
        the idle connection) leaves the set without waking libcurl.
        """
        epoll = self._epoll
        if epoll is None:
            epoll = self._epoll = select.epoll()
            loop.add_reader(epoll.fileno(), self._on_ready)
        if what == pycurl.POLL_REMOVE or not what & _POLL_BOTH:
            events = self._wanted.pop(fd, 0)
            if events & select.EPOLLOUT and fd in self._in_set:
                self._watch(epoll, fd, select.EPOLLIN)  # parked: never for writing
            return
        events = (select.EPOLLIN if what & pycurl.POLL_IN else 0) | (
            select.EPOLLOUT if what & pycurl.POLL_OUT else 0
        )
        if self._wanted.get(fd) != events:
            self._wanted[fd] = events
            self._watch(epoll, fd, events)

    def _watch(self, epoll: select.epoll, fd: int, events: int) -> None:
        if fd in self._in_set:
            try:
                epoll.modify(fd, events)
                return
            except FileNotFoundError:  # closed since, and the number reused
                self._in_set.discard(fd)
        try:
            epoll.register(fd, events)
        except FileExistsError:
            epoll.modify(fd, events)
        self._in_set.add(fd)

    def _on_ready(self) -> None:
        epoll = self._epoll
        if epoll is None or self._closed:
            return
        for fd, events in epoll.poll(0):
            if fd not in self._wanted:  # parked, and the other end closed it
                self._in_set.discard(fd)
                with contextlib.suppress(OSError):
                    epoll.unregister(fd)
                continue
            action = 0
            if events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                action |= pycurl.CSELECT_IN
            if events & select.EPOLLOUT:
                action |= pycurl.CSELECT_OUT
            if events & select.EPOLLERR:
                action |= pycurl.CSELECT_ERR
            self._act(fd, action)

    def _on_timer(self, ms: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        loop = self._loop
        if loop is None or ms < 0:
            return
        self._timer = loop.call_later(ms / 1000, self._act, pycurl.SOCKET_TIMEOUT, 0)

    def _act(self, fd: int, events: int) -> None:
        if fd == pycurl.SOCKET_TIMEOUT:
            self._timer = None
        if self._closed:
            return
        self._multi.socket_action(fd, events)
        while True:
            queued, done, failed = self._multi.info_read()
            for curl in done:
                self._settle(curl, None)
            for curl, code, message in failed:
                self._settle(curl, pycurl.error(code, message))
            if not queued:
                return

    def _settle(self, curl: pycurl.Curl, error: pycurl.error | None) -> None:
        transfer = self._running.get(curl)
        if transfer is None:
            return
        self._finish(transfer)
        future = transfer.future
        if future is not None and not future.done():
            if error is None:
                future.set_result(0)
            else:
                future.set_exception(error)

    def _finish(self, transfer: _Transfer) -> None:
        if self._running.pop(transfer.curl, None) is not None:
            self._multi.remove_handle(transfer.curl)

    async def aclose(self) -> None:
        if self._closed:
            return
        for transfer in list(self._running.values()):
            self._finish(transfer)
            if transfer.future is not None and not transfer.future.done():
                transfer.future.cancel()
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for transfer in self._idle:
            transfer.curl.close()
        self._idle.clear()
        self._multi.close()
        if self._epoll is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._epoll.fileno())
            self._epoll.close()
            self._epoll = None
        self._wanted.clear()
        self._in_set.clear()
        await asyncio.sleep(0)


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


# libcurl's error codes the attempt log names; others are "CurlError".
_CURL_ERRORS = {
    pycurl.E_COULDNT_RESOLVE_HOST: "could not resolve host",
    pycurl.E_COULDNT_CONNECT: "could not connect",
    pycurl.E_SSL_CONNECT_ERROR: "TLS handshake failed",
    pycurl.E_PEER_FAILED_VERIFICATION: "TLS certificate not trusted",
    pycurl.E_GOT_NOTHING: "empty reply",
    pycurl.E_RECV_ERROR: "receive failed",
    pycurl.E_SEND_ERROR: "send failed",
}
