"""Webhook receiver for the benchmark, run as its own process.

    python bench/receiver.py --port PORT --out FILE

An asyncio.Protocol server parsing HTTP/1.1 with httptools (keep-alive, Content-Length
or chunked bodies up to 1 MiB, a larger one is answered 413): a few tens of µs of CPU
per webhook, CPU that Tidegate, on the same cores, keeps.

Answers every POST (any path) with 204 and records, per messageId found in the JSON
body, the arrival time (time.time(), the wall clock shared with the load generator) of
the first delivery and how many times it arrived. GET /stats gives counts (optionally only for
messageIds starting with ?prefix=); GET /stats?full=1 adds every arrival. On SIGTERM
it writes the full record to --out and exits. It counts the deliveries missing any of
the webhook-id, webhook-timestamp and webhook-signature headers, and keeps those
headers and the body of one delivery in 1,000 (at most 50), to check signatures with.

Events whose properties carry `t` (intended send time, wall clock) and `w` (window
index), sent by loadgen.WindowedOpenLoop with messageId PREFIX-i, are aggregated instead
of recorded one by one, so a long run keeps the receiver's memory bounded: per PREFIX a
bit per index i (delivered or not), a duplicate count, and per window a histogram of
arrival - t. GET /compact?prefix=PREFIX gives them (&bitmap=1 adds the bitmap, base64).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import signal
import time
import traceback
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qsl

import httptools
from common import run_async
from stats import Bitmap, LogHistogram

_REQUIRED_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
_REQUIRED = frozenset(h.encode() for h in _REQUIRED_HEADERS)
_SAMPLES = 50
_MAX_BODY = 1024 * 1024  # a larger body is answered 413, as aiohttp.web's default did
_NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"
_NO_CONTENT_CLOSE = b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n"


class Compact:
    """The deliveries of one prefix of a windowed run, aggregated."""

    def __init__(self) -> None:
        self.seen = Bitmap()
        self.delivered = 0
        self.duplicates = 0
        self.windows: dict[int, LogHistogram] = {}

    def add(self, index: int, intended_wall: float, window: int, now: float) -> None:
        if self.seen.set(index):
            self.duplicates += 1
            return
        self.delivered += 1
        histogram = self.windows.get(window)
        if histogram is None:
            histogram = self.windows[window] = LogHistogram()
        histogram.record(max(0.0, now - intended_wall))

    def to_json(self, bitmap: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "delivered": self.delivered,
            "duplicates": self.duplicates,
            "windows": {str(w): h.to_json() for w, h in self.windows.items()},
        }
        if bitmap:
            out["bitmap"] = base64.b64encode(bytes(self.seen.bits)).decode()
        return out


class Record:
    def __init__(self) -> None:
        self.compact: dict[str, Compact] = {}
        self.first_arrival: dict[str, float] = {}
        self.copies: dict[str, int] = {}
        self.requests = 0
        self.unparseable = 0
        self.missing_headers = 0
        self.started = time.time()
        self.samples: list[dict[str, Any]] = []  # a few raw deliveries, to verify signatures

    def counts(self, prefix: str = "") -> dict[str, Any]:
        ids = [m for m in self.first_arrival if m.startswith(prefix)] if prefix else None
        unique = len(ids) if ids is not None else len(self.first_arrival)
        duplicates = (
            sum(self.copies[m] - 1 for m in ids)
            if ids is not None
            else sum(c - 1 for c in self.copies.values())
        )
        return {
            "requests": self.requests,
            "unique": unique,
            "duplicates": duplicates,
            "unparseable": self.unparseable,
            "missing_headers": self.missing_headers,
        }

    def full(self, prefix: str = "") -> dict[str, Any]:
        arrivals = {m: t for m, t in self.first_arrival.items() if m.startswith(prefix)}
        copies = {m: c for m, c in self.copies.items() if m.startswith(prefix) and c > 1}
        return {
            **self.counts(prefix),
            "arrivals": arrivals,
            "copies_over_1": copies,
            "samples": self.samples,
        }

    def deliver(self, headers: dict[bytes, bytes], body: bytes, now: float) -> None:
        """One webhook delivery (a POST) that arrived at `now`; `headers` holds those of
        _REQUIRED_HEADERS it carried (lower-case names)."""
        self.requests += 1
        if len(headers) < len(_REQUIRED):
            self.missing_headers += 1
        if self.requests % 1000 == 1 and len(self.samples) < _SAMPLES:
            values = {
                h: headers.get(h.encode(), b"").decode("utf-8", "surrogateescape")
                for h in _REQUIRED_HEADERS
            }
            self.samples.append({"headers": values, "body": body.decode("utf-8", "replace")})
        try:
            event = json.loads(body)
            message_id = event["messageId"]
            if not isinstance(message_id, str):
                raise TypeError(message_id)
        except (ValueError, KeyError, TypeError):
            self.unparseable += 1
            return
        properties = event.get("properties")
        if isinstance(properties, dict) and "w" in properties and "t" in properties:
            prefix, _, index = message_id.rpartition("-")
            compact = self.compact.get(prefix)
            if compact is None:
                compact = self.compact[prefix] = Compact()
            try:
                compact.add(int(index), float(properties["t"]), int(properties["w"]), now)
            except (TypeError, ValueError):
                self.unparseable += 1
            return
        if message_id in self.first_arrival:
            self.copies[message_id] += 1
        else:
            self.first_arrival[message_id] = now
            self.copies[message_id] = 1


def _response(
    status: str, body: bytes = b"", content_type: bytes = b"text/plain; charset=utf-8"
) -> bytes:
    head = b"HTTP/1.1 " + status.encode()
    if not body:
        return head + b"\r\ncontent-length: 0\r\n\r\n"
    return b"%b\r\ncontent-type: %b\r\ncontent-length: %d\r\n\r\n%b" % (
        head,
        content_type,
        len(body),
        body,
    )


def _json(data: dict[str, Any]) -> bytes:
    return _response("200 OK", json.dumps(data).encode(), b"application/json; charset=utf-8")


class _Connection(asyncio.Protocol):
    """One client connection: requests parsed by httptools, answered in order."""

    def __init__(self, record: Record, connections: set[_Connection]) -> None:
        self.record = record
        self.connections = connections
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.body = b""
        self.too_large = False

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._write(_response("400 Bad Request", b"malformed request"), keep_alive=False)

    # -- httptools callbacks
    def on_message_begin(self) -> None:
        self.url, self.body, self.too_large = b"", b"", False
        self.headers = {}

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in _REQUIRED:
            self.headers.setdefault(name, value)

    def on_body(self, body: bytes) -> None:
        if len(self.body) + len(body) > _MAX_BODY:
            self.too_large = True
        elif not self.too_large:
            self.body += body

    def on_message_complete(self) -> None:
        now = time.time()
        keep_alive = self.parser.should_keep_alive() and not self.too_large
        try:
            answer = self._answer(self.parser.get_method(), now, keep_alive)
        except Exception:  # noqa: BLE001 - a bug answers 500, as aiohttp.web did
            traceback.print_exc()
            answer = _response("500 Internal Server Error")
        self._write(answer, keep_alive)

    # -- the endpoints
    def _answer(self, method: bytes, now: float, keep_alive: bool) -> bytes:
        if method == b"POST":  # any path: a webhook delivery
            if self.too_large:
                return _response("413 Request Entity Too Large")
            self.record.deliver(self.headers, self.body, now)
            return _NO_CONTENT if keep_alive else _NO_CONTENT_CLOSE
        url = httptools.parse_url(self.url)
        path = url.path.decode("utf-8", "replace")
        if method != b"GET" or path not in ("/stats", "/compact"):
            # every path takes a POST: anything else is the wrong method, as with aiohttp.web
            return _response("405 Method Not Allowed", b"method not allowed")
        query: dict[str, str] = {}
        for key, value in parse_qsl((url.query or b"").decode(), keep_blank_values=True):
            query.setdefault(key, value)  # the first of a repeated parameter, as aiohttp
        record = self.record
        if path == "/stats":
            prefix = query.get("prefix", "")
            return _json(record.full(prefix) if query.get("full") else record.counts(prefix))
        found = record.compact.get(query.get("prefix", ""), Compact())
        return _json(found.to_json(bool(query.get("bitmap"))))

    def _write(self, response: bytes, keep_alive: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(response)
        if not keep_alive:
            self.transport.close()


async def serve(port: int) -> Record:
    record = Record()
    connections: set[_Connection] = set()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _Connection(record, connections), "127.0.0.1", port, backlog=1024
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"receiver listening on 127.0.0.1:{port}", flush=True)
    # Bounded: a receiver left behind by a crashed bench exits on its own after an hour.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=3600)
    server.close()
    for conn in list(connections):
        if conn.transport is not None:
            conn.transport.close()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(server.wait_closed(), timeout=5)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    record = run_async(serve(args.port))
    args.out.write_text(json.dumps(record.full()))


if __name__ == "__main__":
    main()
