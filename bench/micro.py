"""In-process microbenchmarks: CPU time per unit of work, for before/after comparisons.

The end-to-end figures of `bench/run.py` move by 15% or more between runs on a shared
machine, which hides a change worth 5%. These measure one part at a time in one process,
as CPU seconds of all its threads per unit of work. Single runs still differ by up to
20% now and then (the machine is shared); the median of five is steadier:

  api    POST /v1/track straight into the ASGI app (request id, Segment handler,
         write-key auth, encryption, the SQLite log's group commit), N requests from C
         concurrent senders, no HTTP: CPU per request.
  batch  the same for POST /v1/batch of 100 messages (N/100 requests): CPU per event.
  store  what process 0's store writer does end to end: record_routed of a batch of
         events with one destination each, then record_attempts of their successes,
         over a store prefilled with P events: CPU per event. Batch sizes vary from 1
         to twice --batch (a statement's shape, and so SQLite's compiled statement,
         depends on its row count, as with the router's batches).
  route  process 0's part of (b): N events ingested (in process, as in `batch`) to a
         tenant without destinations, then the worker role started on them and timed
         until the router has committed the last record's offset, so has stored every
         event (dedupe claim, event row, indexes): CPU per routed event.
  deliver  process 0's whole job: N events ingested (in process, as in `api`) to a
         tenant with one webhook destination, then the worker role (router, dispatcher,
         store writer, aiohttp) started on them and timed until the webhook receiver
         (bench/receiver.py, its own process) has every one: CPU per delivered event.
  redeliver  the store's path: N events routed to a tenant without destinations, then
         one webhook destination created and every event replayed to it, and the worker
         started and timed until the receiver has every one: CPU per delivered event
         when each delivery is claimed from the store and its event read back (retries,
         replays, recovery of a backlog), not handed over by the router.

Each runs --repeats times (5) in a fresh temporary data dir; the median is the figure.
Compare a change against its parent back to back (`git stash`, or a worktree of the
parent with PYTHONPATH=<worktree>/src).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import free_port, run_async
from bench.services import receiver as receiver_service

from tidegate import admin
from tidegate.api.app import build_app
from tidegate.cli.common import load_settings
from tidegate.ids import new_attempt_id, new_event_id, now_ms
from tidegate.model import Attempt, AttemptOutcome, EventMeta
from tidegate.pipeline.runner import Worker
from tidegate.runtime import Runtime, open_runtime
from tidegate.settings import Settings
from tidegate.store import AttemptResult, RoutedEvent
from tidegate.store.sqlite.store import SqliteStore
from tidegate.telemetry import configure_logging


def _settings(data_dir: Path, role: str) -> Settings:
    return load_settings(
        data_dir=data_dir,
        region="eu",
        roles={role},
        ssrf_allow_cidrs="127.0.0.1/32",
        https_only=False,
    )


async def _poster(
    runtime: Runtime, tenant_id: str, batch: int = 1
) -> Callable[[], Awaitable[None]]:
    """A function that POSTs one new track event to /v1/track, or `batch` > 1 of them to
    /v1/batch, straight into the app."""
    app = build_app(runtime)
    _source, write_key = await admin.create_source(runtime, tenant_id, "micro")
    authorization = b"Basic " + base64.b64encode(write_key.encode() + b":")
    numbers = iter(range(10**12))
    path = "/v1/track" if batch == 1 else "/v1/batch"
    message = (
        b'{"type":"track","userId":"u%d","event":"Signed Up",'
        b'"messageId":"micro-%d","properties":{"i":%d}}'
    )

    async def one() -> None:
        bodies = []
        for _ in range(batch):
            i = next(numbers)
            bodies.append(message % (i % 1000, i, i))
        body = bodies[0] if batch == 1 else b'{"batch":[' + b",".join(bodies) + b"]}"
        scope = {
            "type": "http",
            "method": "POST",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "headers": [
                (b"host", b"127.0.0.1"),
                (b"authorization", authorization),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
            "http_version": "1.1",
            "scheme": "http",
            "server": ("127.0.0.1", 80),
            "client": ("127.0.0.1", 1),
            "root_path": "",
            "state": {},
        }
        status: list[int] = []

        async def receive() -> dict[str, object]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, object]) -> None:
            if message["type"] == "http.response.start":
                status.append(int(message["status"]))  # type: ignore[call-overload]

        await app(scope, receive, send)
        if status != [200]:
            raise RuntimeError(f"POST {path} answered {status}")

    return one


async def _post_all(one: Callable[[], Awaitable[None]], each: int, concurrency: int) -> None:
    """`concurrency` senders, each posting `each` events one after another."""

    async def sender() -> None:
        for _ in range(each):
            await one()

    await asyncio.gather(*(sender() for _ in range(concurrency)))


async def api_cpu_per_request(
    data_dir: Path, requests: int, concurrency: int, batch: int = 1
) -> float:
    """µs of CPU (all threads) per POST /v1/track, or per event of POST /v1/batch with
    `batch` messages, after a warm-up."""
    runtime = open_runtime(_settings(data_dir, "api"))
    tenant = await admin.create_tenant(runtime, "micro", "eu")
    one = await _poster(runtime, tenant.id, batch)
    try:
        await _post_all(one, max(1, 1000 // concurrency), concurrency)
        started = time.process_time()
        await _post_all(one, requests // concurrency, concurrency)
        spent = time.process_time() - started
    finally:
        await runtime.aclose()
    return spent / (requests // concurrency * concurrency * batch) * 1e6


async def store_cpu_per_event(data_dir: Path, prefill: int, events: int, batch: int) -> float:
    """µs of CPU (all threads) per event routed to one destination and delivered once."""
    store = SqliteStore(data_dir / "store.db")
    tenant_id, destination_id = "ten_micro", "dst_micro"

    async def round_trip(n: int) -> None:
        received = now_ms()
        routed = [
            RoutedEvent(
                meta=EventMeta(
                    id=new_event_id(),
                    tenant_id=tenant_id,
                    source_id="src_micro",
                    kind="segment",
                    type="track",
                    received_at_ms=received,
                    name_index=b"n" * 16,
                    dedupe_index=os.urandom(16),  # an HMAC: as random as this
                ),
                ciphertext=os.urandom(400),
                destination_ids=(destination_id,),
            )
            for _ in range(n)
        ]
        created = await store.events.record_routed(
            routed, now_ms=now_ms(), dedupe_window_ms=86_400_000, lease_ms=60_000
        )
        at = now_ms()
        results = [
            AttemptResult(
                attempt=Attempt(
                    id=new_attempt_id(),
                    delivery_id=d.id,
                    tenant_id=d.tenant_id,
                    started_at_ms=at,
                    duration_ms=1.0,
                    outcome=AttemptOutcome.SUCCEEDED,
                    status_code=200,
                    error=None,
                ),
                delivery_status="succeeded",
                next_attempt_at_ms=None,
                last_error=None,
            )
            for d in created
        ]
        await store.deliveries.record_attempts(results, now_ms=at)

    try:
        for _ in range(prefill // 1000):
            await round_trip(1000)
        # Batches of varying size, 1 to 2 x `batch` - 1 (mean `batch`), as the router
        # reads them: a statement's shape depends on its row count.
        rng = random.Random(batch)
        sizes = []
        while sum(sizes) < events:
            sizes.append(rng.randint(1, 2 * batch - 1))
        started = time.process_time()
        for size in sizes:
            await round_trip(size)
        spent = time.process_time() - started
    finally:
        await store.aclose()
    return spent / sum(sizes) * 1e6


async def route_cpu_per_event(data_dir: Path, events: int, concurrency: int) -> float:
    """µs of CPU (all threads of this process) per event the worker routes into the store,
    the events sent in batches of 100 to a tenant without destinations."""
    runtime = open_runtime(_settings(data_dir, "api"))
    try:
        tenant = await admin.create_tenant(runtime, "micro", "eu")
        one = await _poster(runtime, tenant.id, 100)
        await _post_all(one, max(1, events // 100 // concurrency), concurrency)
    finally:
        await runtime.aclose()
    expected = max(1, events // 100 // concurrency) * concurrency * 100
    runtime = open_runtime(_settings(data_dir, "worker"))
    worker = Worker(runtime)
    # One record per request, so the router is done when it has committed the last one's
    # offset (a point lookup; counting the store's rows would cost more than the router).
    records = expected // 100
    offsets = sqlite3.connect(f"file:{data_dir / 'log.db'}?mode=ro", uri=True)
    try:
        started = time.process_time()
        worker.start()
        while True:
            await asyncio.sleep(0.05)
            row = offsets.execute(
                "SELECT committed FROM offsets WHERE grp = 'router' AND part = 0"
            ).fetchone()
            if row is not None and row[0] >= records - 1:
                break
        spent = time.process_time() - started
    finally:
        offsets.close()
        await worker.stop()
        await runtime.aclose()
    return spent / expected * 1e6


async def deliver_cpu_per_event(data_dir: Path, events: int, concurrency: int) -> float:
    """µs of CPU (all threads of this process) per event the worker routes and delivers."""
    port = free_port()
    receiver = receiver_service(port, data_dir).start()
    try:
        await asyncio.to_thread(receiver.wait_ready)
        url = f"http://127.0.0.1:{port}/hook"
        runtime = open_runtime(_settings(data_dir, "api"))
        try:
            tenant = await admin.create_tenant(runtime, "micro", "eu")
            await admin.create_destination(runtime, tenant.id, url=url)
            one = await _poster(runtime, tenant.id)
            await _post_all(one, events // concurrency, concurrency)
        finally:
            await runtime.aclose()
        expected = events // concurrency * concurrency
        runtime = open_runtime(_settings(data_dir, "worker"))
        try:
            spent = await _cpu_until_delivered(runtime, receiver.base, expected)
        finally:
            await runtime.aclose()
    finally:
        receiver.stop()
    return spent / expected * 1e6


async def _cpu_until_delivered(runtime: Runtime, receiver_base: str, expected: int) -> float:
    """Start the worker role; CPU seconds (all threads) until the receiver has `expected`
    unique deliveries."""
    worker = Worker(runtime)
    session = aiohttp.ClientSession()
    try:
        started = time.process_time()
        worker.start()
        while True:
            await asyncio.sleep(0.1)
            async with session.get(receiver_base + "/stats") as response:
                delivered = int((await response.json())["unique"])
            if delivered >= expected:
                return time.process_time() - started
    finally:
        await session.close()
        await worker.stop()


async def redeliver_cpu_per_event(data_dir: Path, events: int, concurrency: int) -> float:
    """µs of CPU (all threads of this process) per event the worker claims from the store
    and delivers (a replay of events already routed)."""
    await route_cpu_per_event(data_dir, events, concurrency)
    expected = max(1, events // 100 // concurrency) * concurrency * 100
    port = free_port()
    receiver = receiver_service(port, data_dir).start()
    try:
        await asyncio.to_thread(receiver.wait_ready)
        runtime = open_runtime(_settings(data_dir, "worker"))
        try:
            tenant = (await runtime.store.tenants.list_tenants())[0]
            url = f"http://127.0.0.1:{port}/hook"
            destination, _secret = await admin.create_destination(runtime, tenant.id, url=url)
            replayed = await runtime.store.deliveries.replay_events(
                tenant.id, destination_ids=[destination.id], now_ms=now_ms()
            )
            if replayed != expected:
                raise RuntimeError(f"replayed {replayed} events, expected {expected}")
            spent = await _cpu_until_delivered(runtime, receiver.base, expected)
        finally:
            await runtime.aclose()
    finally:
        receiver.stop()
    return spent / expected * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=("api", "batch", "store", "route", "deliver", "redeliver"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--requests", type=int, default=20_000, help="api: requests measured; batch: events"
    )
    parser.add_argument("--concurrency", type=int, default=32, help="api: concurrent senders")
    parser.add_argument("--prefill", type=int, default=200_000, help="store: events before")
    parser.add_argument(
        "--events",
        type=int,
        default=40_000,
        help="store, route, deliver, redeliver: events measured",
    )
    parser.add_argument("--batch", type=int, default=150, help="store: events per round trip")
    args = parser.parse_args()
    configure_logging(level="warning")  # as the end-to-end bench runs the server
    figures = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="tidegate-micro-") as tmp:
            if args.part == "api":
                figure = run_async(api_cpu_per_request(Path(tmp), args.requests, args.concurrency))
                unit = "µs of CPU per request"
            elif args.part == "batch":
                figure = run_async(
                    api_cpu_per_request(Path(tmp), args.requests // 100, args.concurrency, 100)
                )
                unit = "µs of CPU per event (POST /v1/batch of 100)"
            elif args.part == "store":
                figure = run_async(
                    store_cpu_per_event(Path(tmp), args.prefill, args.events, args.batch)
                )
                unit = "µs of CPU per event"
            elif args.part == "route":
                figure = run_async(route_cpu_per_event(Path(tmp), args.events, args.concurrency))
                unit = "µs of CPU per routed event"
            elif args.part == "redeliver":
                figure = run_async(
                    redeliver_cpu_per_event(Path(tmp), args.events, args.concurrency)
                )
                unit = "µs of CPU per event claimed from the store and delivered"
            else:
                figure = run_async(deliver_cpu_per_event(Path(tmp), args.events, args.concurrency))
                unit = "µs of CPU per delivered event"
        figures.append(figure)
        print(f"{args.part}: {figure:.1f} {unit}", flush=True)
    print(
        f"{args.part}: median {statistics.median(figures):.1f} {unit}"
        f" (min {min(figures):.1f}, max {max(figures):.1f}, {args.repeats} runs)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
