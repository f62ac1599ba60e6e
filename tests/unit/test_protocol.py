"""One write per response: the transport uvicorn gets from `HttpProtocol`.

The unit tests stand a recording transport in for the socket (what reaches `send(2)`
is the observable; a byte stream on loopback cannot show where one write ended). The
last test runs `tidegate serve`'s protocol under uvicorn on a real port, with
keep-alive, pipelining and `Connection: close`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn

from tidegate.api.protocol import CoalescingTransport, HttpProtocol


class Recording(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__(None)
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted


async def test_a_head_and_body_go_out_as_one_write() -> None:
    inner = Recording()
    transport = CoalescingTransport(inner, asyncio.get_running_loop())
    transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    assert inner.writes == []
    transport.write(b"ok")
    assert inner.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]
    await asyncio.sleep(0)  # the turn's flush finds nothing left
    assert len(inner.writes) == 1


async def test_a_lone_write_goes_out_at_the_end_of_the_loop_turn() -> None:
    """A streamed response's head must not wait for its first chunk."""
    inner = Recording()
    transport = CoalescingTransport(inner, asyncio.get_running_loop())
    transport.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
    await asyncio.sleep(0)
    assert inner.writes == [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"]
    transport.write(b"5\r\nhello\r\n")
    transport.write(b"0\r\n\r\n")
    assert inner.writes[1:] == [b"5\r\nhello\r\n0\r\n\r\n"]


async def test_close_sends_what_is_held_first_and_abort_drops_it() -> None:
    loop = asyncio.get_running_loop()
    inner = Recording()
    transport = CoalescingTransport(inner, loop)
    transport.write(b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n")
    transport.close()
    assert inner.writes == [b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n"]
    assert inner.closed

    inner = Recording()
    transport = CoalescingTransport(inner, loop)
    transport.write(b"partial")
    transport.abort()
    await asyncio.sleep(0)
    assert inner.writes == []
    assert inner.aborted


async def test_nothing_is_written_to_a_transport_closed_meanwhile() -> None:
    inner = Recording()
    transport = CoalescingTransport(inner, asyncio.get_running_loop())
    transport.write(b"late")
    inner.closed = True  # the peer went away before the loop's turn ended
    await asyncio.sleep(0)
    assert inner.writes == []
    assert transport.is_closing()


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    body = scope["path"].encode()
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"one,", b"two"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b""})
        return
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@contextlib.asynccontextmanager
async def _server() -> AsyncIterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        _app, http=HttpProtocol, lifespan="on", log_config=None, access_log=False
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:  # uvicorn tells start by an attribute only
        await asyncio.sleep(0.01)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await task


async def _read_until(reader: asyncio.StreamReader, count: int, marker: bytes) -> bytes:
    data = b""
    while data.count(marker) < count:
        chunk = await asyncio.wait_for(reader.read(65536), 5)
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.timeout(30)
async def test_uvicorn_answers_through_it_on_a_real_socket() -> None:
    async with _server() as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # keep-alive, two requests pipelined in one write
        writer.write(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nGET /bb HTTP/1.1\r\nhost: x\r\n\r\n")
        data = await _read_until(reader, 2, b"HTTP/1.1 200")
        assert data.endswith(b"/bb") and data.count(b"HTTP/1.1 200 OK") == 2
        assert b"content-length: 2\r\n\r\n/a" in data
        # a streamed response arrives whole, in order
        writer.write(b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n")
        data = await _read_until(reader, 1, b"0\r\n\r\n")
        assert b"transfer-encoding: chunked" in data
        assert data.endswith(b"4\r\none,\r\n3\r\ntwo\r\n0\r\n\r\n")
        # Connection: close gets its answer before the server closes
        writer.write(b"GET /last HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 5)
        assert data.endswith(b"\r\n\r\n/last")
        writer.close()
