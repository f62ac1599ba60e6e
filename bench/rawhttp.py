"""A small HTTP/1.1 keep-alive client for the load generator, on raw asyncio.

aiohttp cost the generator about 100-200 µs of CPU per request, CPU that the server
under test, on the same cores, then lacked. This client does only what the benchmark
needs, for a few µs:

- per origin (host:port), a pool of at most `connections` persistent connections, each
  with one request in flight (no pipelining); a request that finds every connection busy
  waits in a FIFO queue for the first one free, and a connection is opened when one is
  wanted and the pool is not full;
- the request line and headers are encoded once per URL (`Prepared`); a request is one
  `write` of that head, its Content-Length and its body;
- responses are parsed by httptools (llhttp, the parser uvicorn uses); Content-Length and
  chunked bodies;
- the outcome goes to a callback, `done(error, status, body)`: no Task and no Future per
  request (`request` wraps it in a Future for the odd awaited call);
- a request times out `timeout_s` after it was handed to the client, time spent queueing
  for a connection included (as aiohttp's total timeout); the connection it was on, if
  any, is closed;
- a connection the server closes (Connection: close, or dropped) leaves the pool, and a
  new one is opened when one is next wanted.

`error` is None when a response arrived (whatever its status), else a short label:
"timeout", "ServerDisconnectedError" (the connection closed before the response was
complete), "OSError N" (connecting or the connection failed with errno N), or another
exception's class name. Not supported: TLS, proxies, redirects, compression, responses
delimited by the connection closing (neither Content-Length nor chunked), Expect/100.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

# (error label or None, status, body): status and body are 0 and b"" when error is set
Done = Callable[[str | None, int, bytes], None]

DISCONNECTED = "ServerDisconnectedError"
TIMEOUT = "timeout"
CLOSED = "ClientClosed"

_NO_BODY_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})


def error_label(exc: BaseException) -> str:
    """The short label of a connection failure, as the generator reports errors."""
    if isinstance(exc, TimeoutError):
        return TIMEOUT
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"OSError {exc.errno}"
    return type(exc).__name__


@dataclass(frozen=True)
class Prepared:
    """One method and URL with its headers, encoded once for every request sent to it."""

    host: str
    port: int
    method: str
    head: bytes  # request line and headers, without Content-Length or the blank line

    def encode(self, body: bytes | None) -> bytes:
        """The request on the wire: head, Content-Length (if a body or not a GET-like
        method), blank line, body."""
        if body is None:
            if self.method in _NO_BODY_METHODS:
                return self.head + b"\r\n"
            body = b""
        return b"%bcontent-length: %d\r\n\r\n%b" % (self.head, len(body), body)


def prepare(method: str, url: str, headers: Mapping[str, str]) -> Prepared:
    """Encode the request line and headers of `method url` (http only)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"only http://host[:port]/... URLs are supported: {url!r}")
    port = parts.port or 80
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    names = {name.lower() for name in headers}
    if names & {"content-length", "transfer-encoding", "connection"}:
        raise ValueError("content-length, transfer-encoding and connection are set by the client")
    lines = [f"{method} {target} HTTP/1.1"]
    if "host" not in names:
        lines.append(f"host: {parts.netloc}")
    lines += [f"{name}: {value}" for name, value in headers.items()]
    head = ("\r\n".join(lines) + "\r\n").encode("latin-1")
    return Prepared(parts.hostname, port, method.upper(), head)


class _Exchange:
    """One request: what to write, whom to tell, its timeout, the connection it is on."""

    __slots__ = ("conn", "done", "timer", "wire")

    def __init__(self, wire: bytes, done: Done) -> None:
        self.wire = wire
        self.done = done
        self.timer: asyncio.TimerHandle | None = None
        self.conn: _Connection | None = None


class _Connection(asyncio.Protocol):
    """One keep-alive connection of a pool, with at most one exchange in flight."""

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: _Exchange | None = None
        self.body = b""
        self.complete = False
        self.status = 0
        self.keep_alive = True
        self.dropped = False

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(type(exc).__name__)
            return
        if not self.complete:
            return
        self.complete = False
        exchange, body = self.exchange, self.body
        self.exchange, self.body = None, b""
        if exchange is None:  # a response nobody asked for: the connection is unusable
            self._fail(DISCONNECTED)
            return
        if self.keep_alive:
            self.pool.release(self)
        else:
            self.close()
        self.pool.finish(exchange, None, self.status, body)

    def eof_received(self) -> bool | None:
        self.pool.drop(self)
        return None  # the transport closes itself; connection_lost reports an exchange

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.drop(self)
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            self.pool.finish(exchange, DISCONNECTED if exc is None else error_label(exc), 0, b"")

    # -- httptools callbacks (only those defined are called)
    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        self.complete = True

    # -- the pool's side
    def start(self, exchange: _Exchange) -> None:
        assert self.transport is not None
        self.exchange = exchange
        exchange.conn = self
        self.transport.write(exchange.wire)

    def usable(self) -> bool:
        return not self.dropped and self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        """Leave the pool and close, abandoning the exchange in flight (the caller's)."""
        self.exchange = None
        self.pool.drop(self)
        if self.transport is not None:
            self.transport.close()

    def _fail(self, label: str) -> None:
        exchange = self.exchange
        self.close()
        if exchange is not None:
            self.pool.finish(exchange, label, 0, b"")


class _Pool:
    """The connections to one origin and the requests queued for them."""

    def __init__(self, host: str, port: int, limit: int) -> None:
        self.host, self.port, self.limit = host, port, limit
        self.loop = asyncio.get_running_loop()
        self.idle: list[_Connection] = []
        self.queue: deque[_Exchange] = deque()
        self.opened = 0  # connections open or being opened, at most `limit`
        self.connecting = 0
        self.connections: set[_Connection] = set()
        self.connects: set[asyncio.Task[None]] = set()
        self.closed = False

    def submit(self, exchange: _Exchange, timeout_s: float) -> None:
        exchange.timer = self.loop.call_later(timeout_s, self._timed_out, exchange)
        while self.idle:
            conn = self.idle.pop()  # the most recently used: warm
            if conn.usable():
                conn.start(exchange)
                return
            conn.close()
        self.queue.append(exchange)
        self._grow()

    def release(self, conn: _Connection) -> None:
        """`conn` is free: give it the first queued request, or keep it idle."""
        if self.queue:
            conn.start(self.queue.popleft())
        else:
            self.idle.append(conn)

    def drop(self, conn: _Connection) -> None:
        """`conn` leaves the pool (idempotent); open another if requests are queued."""
        if conn.dropped:
            return
        conn.dropped = True
        self.connections.discard(conn)
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)
        self.opened -= 1
        self._grow()

    def finish(self, exchange: _Exchange, error: str | None, status: int, body: bytes) -> None:
        if exchange.timer is not None:
            exchange.timer.cancel()
        exchange.conn = None
        try:
            exchange.done(error, status, body)
        except Exception as exc:  # noqa: BLE001 - a callback's bug must not break the pool
            self.loop.call_exception_handler(
                {"message": "rawhttp: exception in a request callback", "exception": exc}
            )

    def _timed_out(self, exchange: _Exchange) -> None:
        exchange.timer = None
        conn = exchange.conn
        if conn is None:
            with contextlib.suppress(ValueError):  # (it is queued: a connection would have it)
                self.queue.remove(exchange)
        else:
            conn.close()  # the response may still come: the connection cannot be reused
        self.finish(exchange, TIMEOUT, 0, b"")

    def _grow(self) -> None:
        """Open connections for the queued requests that no opening one will serve."""
        while not self.closed and len(self.queue) > self.connecting and self.opened < self.limit:
            self.opened += 1
            self.connecting += 1
            task = self.loop.create_task(self._connect())
            self.connects.add(task)
            task.add_done_callback(self.connects.discard)

    async def _connect(self) -> None:
        try:
            _transport, conn = await self.loop.create_connection(
                lambda: _Connection(self), self.host, self.port
            )
        except Exception as exc:  # noqa: BLE001 - reported as the request's error label
            self.connecting -= 1
            self.opened -= 1
            # the request this connection was opened for fails, as it would have on it
            if self.queue:
                self.finish(self.queue.popleft(), error_label(exc), 0, b"")
            self._grow()
            return
        self.connecting -= 1
        if self.closed:
            conn.close()
            return
        self.connections.add(conn)
        self.release(conn)

    def close(self) -> None:
        """Close every connection; requests queued or in flight end as CLOSED."""
        self.closed = True
        for task in self.connects:
            task.cancel()
        while self.queue:
            self.finish(self.queue.popleft(), CLOSED, 0, b"")
        for conn in list(self.connections):
            exchange = conn.exchange
            conn.close()
            if exchange is not None:
                self.finish(exchange, CLOSED, 0, b"")


class Client:
    """Pools of keep-alive connections, at most `connections` per origin (host:port).

    Use inside a running event loop; `close` (or `async with`) closes every connection.
    """

    def __init__(self, connections: int) -> None:
        if connections < 1:
            raise ValueError("connections must be >= 1")
        self.connections = connections
        self._pools: dict[tuple[str, int], _Pool] = {}

    def prepare(self, method: str, url: str, headers: Mapping[str, str]) -> Prepared:
        return prepare(method, url, headers)

    def send(self, prepared: Prepared, body: bytes | None, timeout_s: float, done: Done) -> None:
        """Send `prepared` with `body`; `done(error, status, body)` is called once, later
        (never from within this call), when the response is complete or the request
        failed or timed out."""
        key = (prepared.host, prepared.port)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = _Pool(prepared.host, prepared.port, self.connections)
        pool.submit(_Exchange(prepared.encode(body), done), timeout_s)

    async def request(
        self, prepared: Prepared, body: bytes | None, timeout_s: float
    ) -> tuple[str | None, int, bytes]:
        """`send`, awaited: (error, status, body)."""
        future: asyncio.Future[tuple[str | None, int, bytes]] = (
            asyncio.get_running_loop().create_future()
        )

        def done(error: str | None, status: int, body: bytes) -> None:
            if not future.done():
                future.set_result((error, status, body))

        self.send(prepared, body, timeout_s, done)
        return await future

    async def close(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()
        await asyncio.sleep(0)  # let the transports run their close callbacks

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()
