"""Webhook receiver for the benchmark, run as its own process.

    python bench/receiver.py --port PORT --out FILE

Answers every POST with 204 and records, per messageId found in the JSON body, the
arrival time (time.time(), the wall clock shared with the load generator) of the first
delivery and how many times it arrived. GET /stats gives counts (optionally only for
messageIds starting with ?prefix=); GET /stats?full=1 adds every arrival. On SIGTERM
it writes the full record to --out and exits.

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
from pathlib import Path
from typing import Any

from aiohttp import web
from common import run_async
from stats import Bitmap, LogHistogram

_REQUIRED_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
_SAMPLES = 50


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


def build_app(record: Record) -> web.Application:
    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        now = time.time()
        record.requests += 1
        if any(h not in request.headers for h in _REQUIRED_HEADERS):
            record.missing_headers += 1
        if record.requests % 1000 == 1 and len(record.samples) < _SAMPLES:
            headers = {h: request.headers.get(h, "") for h in _REQUIRED_HEADERS}
            record.samples.append({"headers": headers, "body": body.decode("utf-8", "replace")})
        try:
            event = json.loads(body)
            message_id = event["messageId"]
            if not isinstance(message_id, str):
                raise TypeError(message_id)
        except (ValueError, KeyError, TypeError):
            record.unparseable += 1
            return web.Response(status=204)
        properties = event.get("properties")
        if isinstance(properties, dict) and "w" in properties and "t" in properties:
            prefix, _, index = message_id.rpartition("-")
            compact = record.compact.get(prefix)
            if compact is None:
                compact = record.compact[prefix] = Compact()
            try:
                compact.add(int(index), float(properties["t"]), int(properties["w"]), now)
            except (TypeError, ValueError):
                record.unparseable += 1
            return web.Response(status=204)
        if message_id in record.first_arrival:
            record.copies[message_id] += 1
        else:
            record.first_arrival[message_id] = now
            record.copies[message_id] = 1
        return web.Response(status=204)

    async def stats(request: web.Request) -> web.Response:
        prefix = request.query.get("prefix", "")
        data = record.full(prefix) if request.query.get("full") else record.counts(prefix)
        return web.json_response(data)

    async def compact(request: web.Request) -> web.Response:
        found = record.compact.get(request.query.get("prefix", ""), Compact())
        return web.json_response(found.to_json(bool(request.query.get("bitmap"))))

    app = web.Application(client_max_size=1024 * 1024)
    app.router.add_post("/{tail:.*}", hook)
    app.router.add_get("/stats", stats)
    app.router.add_get("/compact", compact)
    return app


async def serve(port: int) -> Record:
    record = Record()
    runner = web.AppRunner(build_app(record), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"receiver listening on 127.0.0.1:{port}", flush=True)
    # Bounded: a receiver left behind by a crashed bench exits on its own after an hour.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=3600)
    await runner.cleanup()
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
