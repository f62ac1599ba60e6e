"""Webhook delivery over libcurl (pycurl's multi interface on the event loop), signed per
Standard Webhooks.

One `CurlMulti` runs every attempt: its socket and timer callbacks are the event loop's
`add_reader`/`add_writer` and `call_later`, so transfers make progress as the loop turns,
and its connection cache keeps connections alive between attempts. libcurl's request
path costs about 30 µs of CPU per webhook here against about 70 for aiohttp's
(docs/benchmarks.md, sixth session; ADR 0001).

Redirects are not followed (a 3xx is a failure). Proxies named by the environment are
not used. Every request's host is checked by the SSRF policy: IP literals before the
request, and each address libcurl is about to connect to (a name resolved by libcurl)
in its open-socket callback, which refuses a blocked one before any connection is made:
the connection only ever goes to a checked address. HTTPS verifies the peer against the
system's CA certificates (Python's `ssl` default paths), not the wheel's built-in path.
"""

from __future__ import annotations

import asyncio
import os
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
    def __init__(self, policy: SsrfPolicy, *, default_timeout_s: float, limit: int = 1024) -> None:
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
