"""Tidegate benchmark: one command, one run, every figure measured side by side.

    make bench                               # everything, with the 10-minute soak: ~15-20 min
    make bench SOAK=0                        # everything but the soak: ~5 minutes
    make bench QUICK=1                       # shorter windows, no steps, no soak: ~2 minutes
    .venv/bin/python bench/run.py            # = make bench
    .venv/bin/python bench/run.py --soak-seconds 0          # = make bench SOAK=0
    .venv/bin/python bench/run.py --quick                   # = make bench QUICK=1
    .venv/bin/python bench/run.py --engine postgres+kafka   # make bench ENGINE=postgres+kafka
    .venv/bin/python bench/run.py --engine both             # make bench ENGINE=both (no soak)

Starts, each in its own process on 127.0.0.1: `tidegate serve` in a fresh temp data
dir, a webhook receiver (bench/receiver.py) and a minimal ASGI app under uvicorn
(bench/baseline_app.py, the machine's ceiling). The load generator runs here.

Engines (--engine): `embedded` (default: SQLite log and store), `postgres+kafka` (a
fresh database on the PostgreSQL server at 127.0.0.1:5432 and a Tansu Kafka-protocol
broker started for the run, see bench/engines.py), or `both`: the baseline, (a), (c),
(c) sustained and (d) on each engine in turn, each on a Tidegate process (and receiver)
of its own, reported side by side; (b), the step search and the soak are left out of
`both` to keep the run short (--step-rates / --soak-seconds bring them back).

Scenarios:
  baseline  the minimal app, closed loop, same generator as (a); run before and after (a)
  (a)       POST /v1/track, closed loop, N concurrent senders (64), then again with
            --wide-concurrency senders (256): throughput at saturation
  wrk       the baseline and (a) wide again under wrk, a C load generator, when it is
            installed (bench/wrk.py; --no-wrk skips it); first nginx answering the same
            request itself under wrk, when nginx is installed: HTTP with no application
  (b)       POST /v1/batch (100 events/request), closed loop, 8 senders, then again with
            --wide-batch-concurrency senders (32)
  (c)       POST /v1/track, open loop at a fixed rate, to a tenant with a webhook
            destination: ack latency and ingest->delivery latency, ledger, lost events
  (d)       GET /v1/events?limit=20 at ~20 req/s while (c) runs
  (c) steps the same end to end at rising rates (--step-rates, default 1,200, 2,400,
            3,600 events/s, 10 s each), stopping at the first that does not keep up
  (c) sustained  end to end, one webhook per event, open loop at --sustained-rate
            (default 5,000 events/s) for --sustained-seconds (30, quick 10): acked rate,
            delivered rate while sending, kept up or not, ledger, ingest->delivery
  (e) soak  the same at --soak-rate (default 5,000 events/s) for --soak-seconds (default
            600; 0 skips it; --quick and `both` skip it): RSS and CPU of Tidegate, the
            receiver and the generator every 10 s, per-minute table, RSS growth (linear
            fit over the last 8 minutes, end minus minute 2), ledger, per-minute latency

(a) and (b) use a tenant without destinations, so they measure the ingest path (plus
the router storing the events); (c) and the runs after it use a second tenant with one
destination. After (a) and (b) the run waits until the router has stored everything
(Tidegate's counter of events the router recorded reaches its ingest counter) so their
backlog does not leak into the next scenario; after each end-to-end run it waits for the
remaining deliveries.

The steps, the sustained run and the soak keep no per-event record: each event carries
its intended send time, the receiver aggregates (a bit per event, a latency histogram
per window) and so does the generator, which also keeps at most --max-in-flight requests
outstanding (one due beyond that is not sent and counts as an error). Memory stays
bounded over any duration. A server that cannot take the offered rate shows as errors.

Writes bench/results/<timestamp>.json and appends a section to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import engines
import loadgen
import procstat
import report
import services
import wrk
from common import free_port, loop_name, run_async
from stats import Bitmap, LogHistogram, summarize_ms

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
DOCS = ROOT / "docs" / "benchmarks.md"
T = TypeVar("T")
DEFAULT_STEP_RATES = (1200.0, 2400.0, 3600.0)
# a wait for deliveries ends early once none arrived for this long: longer than
# Tidegate's 60 s delivery lease, so one waiting for its lease to lapse still counts
NO_PROGRESS_S = 75.0
MIB = 1024 * 1024
# the soak shows "no growth" when the RSS fitted over its last 8 minutes grows by at most
# this share of the RSS at minute 2
GROWTH_TOLERANCE = 0.05


@dataclass(frozen=True)
class Plan:
    quick: bool
    engines: tuple[str, ...]
    batch: bool
    warmup_s: float
    burst_s: float
    concurrency: int
    wide_concurrency: int
    wide_s: float
    batch_concurrency: int
    wide_batch_concurrency: int
    batch_size: int
    rate: float
    e2e_s: float
    read_rate: float
    drain_s: float
    catchup_s: float
    sustained_rate: float
    sustained_s: float
    step_rates: tuple[float, ...]
    step_s: float
    long_drain_s: float
    soak_s: float
    soak_rate: float
    sample_every_s: float
    max_in_flight: int
    processes: int
    wrk: bool
    # nginx's executable, when it is installed and wrk runs
    nginx: str | None

    @staticmethod
    def from_args(args: argparse.Namespace) -> Plan:
        quick = bool(args.quick)
        selected = engines.selected(args.engine)
        single = len(selected) == 1
        if args.step_rates is not None:
            steps = tuple(float(r) for r in args.step_rates.split(",") if r.strip())
        else:
            steps = () if quick or not single else DEFAULT_STEP_RATES
        if args.soak_seconds is not None:
            soak_s = float(args.soak_seconds)
        else:
            soak_s = 0.0 if quick or not single else 600.0
        return Plan(
            quick=quick,
            engines=selected,
            # (b) runs when one engine is measured; `both` keeps to (a), (c) and (d)
            batch=len(selected) == 1,
            warmup_s=1.0 if quick else 2.0,
            burst_s=args.burst_seconds or (4.0 if quick else 10.0),
            concurrency=args.concurrency,
            wide_concurrency=args.wide_concurrency,
            # half the burst: every event stays in the store, and a larger store makes the
            # end-to-end scenarios after it slower (the dedupe index grows)
            wide_s=(args.burst_seconds or (4.0 if quick else 10.0)) / 2,
            batch_concurrency=args.batch_concurrency,
            wide_batch_concurrency=args.wide_batch_concurrency,
            batch_size=100,
            rate=args.rate,
            e2e_s=args.e2e_seconds or (10.0 if quick else 20.0),
            read_rate=args.read_rate,
            # > Tidegate's 60 s delivery lease, so "late" is not mistaken for "lost"
            drain_s=30.0 if quick else 90.0,
            # the wide (b) run leaves ~1,000,000 events to route at ~20,000/s; the next
            # scenario must not start on that backlog
            catchup_s=60.0 if quick else 180.0,
            sustained_rate=args.sustained_rate,
            sustained_s=args.sustained_seconds or (10.0 if quick else 30.0),
            step_rates=tuple(r for r in steps if r < args.sustained_rate),
            step_s=10.0,
            long_drain_s=60.0 if quick else 180.0,
            soak_s=soak_s,
            soak_rate=args.soak_rate,
            sample_every_s=10.0,
            max_in_flight=args.max_in_flight,
            processes=args.processes,
            wrk=not args.no_wrk and wrk.executable() is not None,
            nginx=(
                services.nginx_executable()
                if not args.no_wrk and wrk.executable() is not None
                else None
            ),
        )


# -- helpers ------------------------------------------------------------------------------


def process_group(service: services.Service, processes: int) -> int | tuple[int, ...]:
    """A service's pid, or with several processes, its pid and its children's (the api
    processes of `tidegate serve --processes N`, the baseline's uvicorn workers)."""
    if processes == 1:
        return service.pid
    return (service.pid, *procstat.children(service.pid))


class Window:
    """CPU of every process (and the machine) over one measured window."""

    def __init__(self, pids: dict[str, int | Sequence[int]]) -> None:
        self._meter = procstat.ProcessMeter(pids)

    def __enter__(self) -> Window:
        self._meter.start(time.monotonic())
        self.resources: dict[str, object] = {}
        return self

    def __exit__(self, *_exc: object) -> None:
        self.resources = self._meter.stop(time.monotonic())


def ensure_alive(service: services.Service, stage: str) -> None:
    if not service.alive():
        code = service.proc.poll() if service.proc else None
        raise RuntimeError(f"{service.name} exited during {stage} (exit code {code})")


async def bounded(awaitable: Awaitable[T], timeout_s: float) -> T:
    return await asyncio.wait_for(awaitable, timeout=timeout_s)


async def wrk_runs(
    plan: Plan,
    run_id: str,
    tg: services.Service,
    bl: services.Service,
    ingest: services.Tenant,
    pids: Callable[[], dict[str, int | Sequence[int]]],
    control: aiohttp.ClientSession,
    out: dict[str, Any],
) -> None:
    """nginx (when installed: the machine's HTTP ceiling), the baseline (plan.concurrency
    connections) and (a) (plan.wide_concurrency) under wrk, each as long as its
    Python-generator twin; then the router's catch-up. If wrk itself fails, the run says
    why and goes on without these rows."""
    if plan.nginx is None:
        out["nginx"] = {"skipped": "nginx is not installed"}
    else:
        ng = services.nginx(plan.nginx, free_port(), tg.log_path.parent)
        try:
            ng.start().wait_ready()
            print(f"nginx_wrk: wrk, {plan.concurrency} connections", flush=True)
            out["nginx_wrk"] = await asyncio.to_thread(
                wrk.closed,
                ng.base + "/v1/track",
                loadgen.basic_auth("nginx"),
                f"{run_id}-nginx",
                connections=plan.concurrency,
                seconds=plan.burst_s,
                pids=lambda: {**pids(), "nginx": (ng.pid, *procstat.children(ng.pid))},
                # a thread per core, as nginx has a worker per core: one wrk thread is
                # the bound here (140-160k req/s against 150-235k with two, on 2 cores)
                threads=os.cpu_count() or 1,
            )
            ensure_alive(ng, "nginx_wrk")
            print(f"  nginx_wrk: {out['nginx_wrk']['events_per_s']:,.0f} req/s", flush=True)
        except (wrk.WrkFailed, RuntimeError) as exc:
            out["nginx"] = {"skipped": str(exc).splitlines()[0][:300]}
            print(f"  nginx_wrk: {out['nginx']['skipped']}", flush=True)
        finally:
            ng.stop()
    for key, service, auth, connections, seconds in (
        ("baseline_wrk", bl, loadgen.basic_auth("baseline"), plan.concurrency, plan.burst_s),
        (
            "a_wrk",
            tg,
            loadgen.basic_auth(ingest.write_key),
            plan.wide_concurrency,
            plan.wide_s,
        ),
    ):
        print(f"{key}: wrk, {connections} connections", flush=True)
        try:
            out[key] = await asyncio.to_thread(
                wrk.closed,
                service.base + "/v1/track",
                auth,
                f"{run_id}-{key}",
                connections=connections,
                seconds=seconds,
                pids=pids,
            )
        except wrk.WrkFailed as exc:
            ensure_alive(service, key)
            out["wrk"] = {"skipped": str(exc).splitlines()[0][:300]}
            print(f"  {key}: {out['wrk']['skipped']}", flush=True)
            return
        ensure_alive(service, key)
        summary = out[key]
        print(
            f"  {key}: {summary['events_per_s']:,.0f} events/s,"
            f" p99 {summary['latency_ms']['p99']} ms, errors {summary['errors']}",
            flush=True,
        )
    out["a_wrk"]["router_catch_up_s"] = await catch_up(control, tg.base, plan.catchup_s)


def closed_summary(result: loadgen.Result, resources: dict[str, object]) -> dict[str, Any]:
    return {
        "mode": result.mode,
        "offered": result.offered,
        "elapsed_s": round(result.elapsed_s, 2),
        "requests_sent": result.requests_sent,
        "requests_ok": result.requests_ok,
        "requests_per_s": round(result.requests_per_s, 1),
        "events_sent": result.events_sent,
        "events_acked": result.events_acked,
        "events_per_s": round(result.events_per_s, 1),
        "errors": dict(result.errors),
        "unfinished": result.unfinished,
        "latency_ms": summarize_ms(result.latencies_s),
        "resources": resources,
    }


async def catch_up(http: aiohttp.ClientSession, base: str, timeout_s: float) -> float | None:
    """Seconds until the router has recorded every event acknowledged so far, or None if
    it did not within `timeout_s`: Tidegate's own counters, summed over its processes,
    until `tidegate_events_routed_total` reaches `tidegate_events_ingested_total`. Every
    log partition counts; a sentinel event, as before, showed only the partition (the
    api process) it landed in, and a backlog in another leaked into the next scenario."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s:
        counters = await scrape_metrics(http, base)
        ingested = sum(v for k, v in counters.items() if k.startswith(_INGESTED))
        routed = sum(v for k, v in counters.items() if k.startswith(_ROUTED))
        if routed >= ingested:
            return round(time.perf_counter() - started, 2)
        await asyncio.sleep(0.1)
    return None


_INGESTED = "tidegate_events_ingested_total"
_ROUTED = "tidegate_events_routed_total"


async def receiver_counts(
    http: aiohttp.ClientSession, receiver: services.Service, prefix: str, full: bool = False
) -> dict[str, Any]:
    params = {"prefix": prefix, **({"full": "1"} if full else {})}
    async with http.get(
        receiver.base + "/stats", params=params, timeout=aiohttp.ClientTimeout(total=30)
    ) as response:
        data: dict[str, Any] = await response.json()
        return data


async def wait_delivered(
    http: aiohttp.ClientSession,
    receiver: services.Service,
    prefix: str,
    expected: int,
    timeout_s: float,
) -> tuple[int, float]:
    """Poll the receiver until `expected` distinct messageIds with `prefix` arrived, or
    `timeout_s` passed. Returns (delivered, seconds waited)."""
    started = time.perf_counter()
    delivered = 0
    while True:
        delivered = int((await receiver_counts(http, receiver, prefix))["unique"])
        waited = time.perf_counter() - started
        if delivered >= expected or waited >= timeout_s:
            return delivered, round(waited, 2)
        await asyncio.sleep(0.25)


async def scrape_metrics(http: aiohttp.ClientSession, base: str) -> dict[str, float]:
    """Tidegate's counters (*_total) and histogram sums and counts from /metrics."""
    async with http.get(base + "/metrics") as response:
        text = await response.text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        bare = name.split("{", 1)[0]
        if bare.startswith("tidegate_") and bare.endswith(("_total", "_sum", "_count")):
            out[name] = float(value)
    return out


def histogram_means_ms(delta: dict[str, float]) -> dict[str, dict[str, float]]:
    """Mean (ms) and observation count of each Tidegate histogram over a window."""
    out: dict[str, dict[str, float]] = {}
    for name, count in delta.items():
        if name.endswith("_count") and count:
            base = name.removesuffix("_count")
            mean = round(1000 * delta.get(base + "_sum", 0.0) / count, 2)
            out[base] = {"mean_ms": mean, "observations": int(count)}
    return out


async def count_pages(
    http: aiohttp.ClientSession,
    url: str,
    api_key: str,
    collect: str | None = None,
    max_pages: int = 200,
) -> tuple[int, set[str], bool]:
    """Page through a read-API list (500 per page, at most `max_pages`): the number of
    rows, the values of field `collect`, and whether the listing was complete."""
    headers = {"authorization": f"Bearer {api_key}"}
    rows = 0
    values: set[str] = set()
    cursor: str | None = None
    for _ in range(max_pages):
        params = {"limit": "500", **({"cursor": cursor} if cursor else {})}
        async with http.get(
            url, params=params, headers=headers, timeout=aiohttp.ClientTimeout(total=30)
        ) as response:
            if response.status != 200:
                return rows, values, False
            page = await response.json()
        rows += len(page["data"])
        if collect is not None:
            values.update(str(row.get(collect)) for row in page["data"])
        cursor = page.get("next_cursor")
        if not cursor:
            return rows, values, True
    return rows, values, False


async def account_for_missing(
    http: aiohttp.ClientSession, base: str, tenant: services.Tenant, missing: set[str]
) -> dict[str, Any]:
    """Where undelivered events are, according to Tidegate's own read API: deliveries
    still pending or dead for the tenant, and whether the events were stored at all."""
    out: dict[str, Any] = {}
    for status in ("pending", "dead"):
        count, _, complete = await count_pages(
            http, f"{base}/v1/deliveries?status={status}", tenant.api_key
        )
        out[f"deliveries_{status}"] = count if complete else f">={count}"
    if missing:
        _, stored_ids, complete = await count_pages(
            http, f"{base}/v1/events", tenant.api_key, collect="message_id"
        )
        out["missing_but_stored_as_events"] = len(missing & stored_ids)
        out["missing_and_not_stored"] = len(missing - stored_ids)
        out["event_listing_complete"] = complete
    return out


def verify_signatures(samples: list[dict[str, Any]], secret: str | None) -> dict[str, Any]:
    """Check the Standard Webhooks signature of the receiver's sample deliveries."""
    from standardwebhooks.webhooks import Webhook, WebhookVerificationError

    if secret is None:
        return {"checked": 0, "verified": 0}
    hook = Webhook(secret)
    verified = 0
    failures: list[str] = []
    for sample in samples:
        try:
            hook.verify(sample["body"].encode(), sample["headers"])
            verified += 1
        except WebhookVerificationError as exc:
            failures.append(str(exc))
    return {"checked": len(samples), "verified": verified, "failures": failures[:5]}


def keeps_up(c: dict[str, Any], key: str = "timeline_2s") -> dict[str, Any]:
    """Did Tidegate keep pace with the offered rate? Every request it was offered must be
    acknowledged (an error, or a request the generator could not even send because too
    many were outstanding, means ingest fell behind); the delivery rate while sending
    must follow the ack rate; and delivery latency must not grow from the first slice
    to the last."""
    slices = [b for b in c[key] if b["delivery_p50_ms"] is not None]
    first = slices[0]["delivery_p50_ms"] if slices else None
    last = slices[-1]["delivery_p50_ms"] if slices else None
    rate_ratio = (
        c["delivery_rate_while_sending_per_s"] / c["events_per_s"] if c["events_per_s"] else 0
    )
    growing = first is not None and last is not None and last > max(2 * first, first + 500)
    ledger = c["ledger"]
    return {
        "delivery_to_ack_rate_ratio": round(rate_ratio, 2),
        "first_slice_p50_ms": first,
        "last_slice_p50_ms": last,
        "all_acknowledged": ledger["errors"] == 0 and ledger["unfinished"] == 0,
        "kept_up": rate_ratio >= 0.9 and not growing and ledger["errors"] == 0,
    }


def metrics_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}


def timeline(
    result: loadgen.Result, e2e: dict[str, float], bucket_s: float
) -> list[dict[str, Any]]:
    """Per time bucket of intended send time: events, ack p50/p99, delivery p50/p99 (ms)."""
    if not result.acked_intended_wall:
        return []
    t0 = result.started_wall
    buckets: dict[int, list[str]] = {}
    for mid, intended in result.acked_intended_wall.items():
        buckets.setdefault(int((intended - t0) // bucket_s), []).append(mid)
    rows = []
    for index in sorted(buckets):
        ids = buckets[index]
        delivery = [e2e[m] for m in ids if m in e2e]
        summary = summarize_ms(delivery)
        rows.append(
            {
                "from_s": round(index * bucket_s, 1),
                "acked": len(ids),
                "delivered": len(delivery),
                "delivery_p50_ms": summary["p50"],
                "delivery_p99_ms": summary["p99"],
            }
        )
    return rows


# -- the run ------------------------------------------------------------------------------


async def measure(
    plan: Plan,
    run_id: str,
    tg: services.Service,
    rc: services.Service,
    bl: services.Service,
    ingest: services.Tenant,
    e2e: services.Tenant,
    engine: engines.Engine,
    out: dict[str, Any],
) -> None:
    """Run every scenario, filling `out` as it goes (a failure keeps what was measured)."""

    def pids() -> dict[str, int | Sequence[int]]:
        # read at the start of each window: the PostgreSQL backends come and go, and so
        # would a Tidegate api process restarted by process 0
        return {
            "tidegate": process_group(tg, plan.processes),
            "receiver": rc.pid,
            "baseline": process_group(bl, plan.processes),
            **engine.pids(),
        }

    def check(stage: str) -> None:
        for service in (tg, rc, bl):
            ensure_alive(service, stage)
        engine.check(stage)

    async with contextlib.AsyncExitStack() as stack:
        control = await stack.enter_async_context(loadgen.session(8))
        ingest_http = await stack.enter_async_context(loadgen.client(256))
        read_http = await stack.enter_async_context(loadgen.client(16))

        async def closed(
            name: str, target: loadgen.Target, concurrency: int, duration_s: float
        ) -> tuple[loadgen.Result, dict[str, object]]:
            # Connections of their own, opened by the warm-up, as `concurrency` new clients
            # would: the kernel spreads them across the api processes (SO_REUSEPORT). Taken
            # from one pool kept across scenarios, they were the ones the last scenario
            # used most recently, and most of (b)'s 32 came to one api process: it ran at
            # a full core while the other idled (sixteenth session, benchmarks.md).
            async with loadgen.client(concurrency) as burst:
                await loadgen.closed_loop(
                    burst,
                    target,
                    name=f"{name}-warmup",
                    concurrency=concurrency,
                    duration_s=plan.warmup_s,
                )
                with Window(pids()) as window:
                    result = await loadgen.closed_loop(
                        burst, target, name=name, concurrency=concurrency, duration_s=duration_s
                    )
            check(name)
            print(
                f"  {name}: {result.events_per_s:,.0f} events/s, "
                f"p99 {summarize_ms(result.latencies_s)['p99']} ms, errors {dict(result.errors)}",
                flush=True,
            )
            return result, window.resources

        async def ingest_run(
            key: str, target: loadgen.Target, concurrency: int, duration_s: float
        ) -> None:
            """(a) or (b): a closed-loop run, then the wait for the router to store it all."""
            r, res = await closed(key, target, concurrency, duration_s)
            out[key] = closed_summary(r, res)
            with Window(pids()) as window:
                out[key]["router_catch_up_s"] = await catch_up(control, tg.base, plan.catchup_s)
            out[key]["catch_up_resources"] = window.resources
            print(f"  router caught up after {out[key]['router_catch_up_s']} s", flush=True)

        # baseline before (a)
        print("baseline (minimal ASGI app), before (a)", flush=True)
        bl_target = loadgen.track_target(bl.base, "baseline", f"{run_id}-bl")
        r, res = await closed("baseline_before", bl_target, plan.concurrency, plan.burst_s)
        out["baseline_before"] = closed_summary(r, res)

        # (a) single-event ingest
        print("(a) POST /v1/track, closed loop", flush=True)
        a_target = loadgen.track_target(tg.base, ingest.write_key, f"{run_id}-a")
        await ingest_run("a_track", a_target, plan.concurrency, plan.burst_s)

        # (a) again with more senders: at 64, Tidegate's ack latency (a durable commit per
        # group) bounds the rate before the cores do; throughput is measured at saturation
        if plan.wide_concurrency > plan.concurrency:
            print(f"(a) POST /v1/track, closed loop, {plan.wide_concurrency} senders", flush=True)
            wide_target = loadgen.track_target(tg.base, ingest.write_key, f"{run_id}-aw")
            await ingest_run("a_wide", wide_target, plan.wide_concurrency, plan.wide_s)

        # baseline after (a): brackets (a) against drift of a shared machine
        print("baseline (minimal ASGI app), after (a)", flush=True)
        r, res = await closed("baseline_after", bl_target, plan.concurrency, plan.burst_s)
        out["baseline_after"] = closed_summary(r, res)

        # the baseline and (a) wide again under wrk (C): is the Python generator the bound?
        if plan.wrk:
            await wrk_runs(plan, run_id, tg, bl, ingest, pids, control, out)
        else:
            out["wrk"] = {"skipped": "--no-wrk" if wrk.executable() else "wrk is not installed"}

        # (b) batched ingest
        if plan.batch:
            print(f"(b) POST /v1/batch x{plan.batch_size}, closed loop", flush=True)
            b_target = loadgen.batch_target(
                tg.base, ingest.write_key, f"{run_id}-b", plan.batch_size
            )
            await ingest_run("b_batch", b_target, plan.batch_concurrency, plan.burst_s)
            if plan.wide_batch_concurrency > plan.batch_concurrency:
                print(
                    f"(b) POST /v1/batch x{plan.batch_size}, closed loop,"
                    f" {plan.wide_batch_concurrency} senders",
                    flush=True,
                )
                bw_target = loadgen.batch_target(
                    tg.base, ingest.write_key, f"{run_id}-bw", plan.batch_size
                )
                await ingest_run("b_wide", bw_target, plan.wide_batch_concurrency, plan.wide_s)

        # (c) + (d): end to end at a fixed rate, with reads alongside
        print(f"(c) open loop {plan.rate:g} events/s for {plan.e2e_s:g} s, + (d) reads", flush=True)
        c_target = loadgen.track_target(tg.base, e2e.write_key, f"{run_id}-c")
        warm_prefix = f"{run_id}-cw"
        warm = await loadgen.open_loop(
            ingest_http,
            loadgen.track_target(tg.base, e2e.write_key, warm_prefix),
            name="c_warmup",
            rate=plan.rate,
            duration_s=min(1.0, plan.e2e_s),
        )
        warm_delivered, warm_wait = await wait_delivered(
            control, rc, warm_prefix, warm.events_acked, 30
        )
        d_target = loadgen.get_target(
            tg.base + "/v1/events?limit=20",
            {"authorization": f"Bearer {e2e.api_key}"},
            lambda status, body: status == 200 and body.startswith(b'{"data":['),
        )
        metrics_before = await scrape_metrics(control, tg.base)
        with Window(pids()) as window:
            c, d = await asyncio.gather(
                loadgen.open_loop(
                    ingest_http,
                    c_target,
                    name="c_e2e",
                    rate=plan.rate,
                    duration_s=plan.e2e_s,
                    keep_ids=True,
                ),
                loadgen.open_loop(
                    read_http, d_target, name="d_read", rate=plan.read_rate, duration_s=plan.e2e_s
                ),
            )
        c_resources = window.resources
        check("(c)")
        prefix = f"{run_id}-c-"
        at_end = await receiver_counts(control, rc, prefix)
        with Window(pids()) as window:
            delivered, drain_wait = await wait_delivered(
                control, rc, prefix, c.events_acked, plan.drain_s
            )
        drain_resources = window.resources
        metrics_after = await scrape_metrics(control, tg.base)
        full = await receiver_counts(control, rc, prefix, full=True)
        missing = {m for m in c.acked_intended_wall if m not in full["arrivals"]}
        accounting = await account_for_missing(control, tg.base, e2e, missing)

    arrivals: dict[str, float] = full["arrivals"]
    acked = c.acked_intended_wall
    e2e_latency = {m: arrivals[m] - t for m, t in acked.items() if m in arrivals}
    delivered_acked = len(e2e_latency)
    delivered_unacked = sorted(m for m in arrivals if m not in acked)
    lost_ids = sorted(m for m in acked if m not in arrivals)
    out["c_e2e"] = {
        **closed_summary(c, c_resources),
        "ack_latency_ms": summarize_ms(c.latencies_s),
        "dispatch_lag_ms": summarize_ms(c.dispatch_lag_s),
        "delivery_latency_ms": summarize_ms(list(e2e_latency.values())),
        "ledger": {
            "sent": c.events_sent,
            "acknowledged": c.events_acked,
            "errors": sum(c.errors.values()),
            "unfinished": c.unfinished,
            "delivered": delivered_acked,
            "lost": c.events_acked - delivered_acked,
            "delivered_but_not_acknowledged": len(delivered_unacked),
            "duplicate_deliveries": int(full["duplicates"]),
            "receiver_missing_signature_headers": int(full["missing_headers"]),
            "receiver_unparseable_bodies": int(full["unparseable"]),
        },
        "lost_examples": lost_ids[:10],
        "lost_accounting": accounting,
        "delivered_at_end_of_sending": int(at_end["unique"]),
        "delivery_rate_while_sending_per_s": round(int(at_end["unique"]) / c.elapsed_s, 1),
        "drain": {
            "waited_s": drain_wait,
            "limit_s": plan.drain_s,
            "delivered_during_drain": delivered - int(at_end["unique"]),
            "delivery_rate_per_s": round(
                (delivered - int(at_end["unique"])) / drain_wait if drain_wait else 0.0, 1
            ),
            "resources": drain_resources,
        },
        "warmup": {
            "acked": warm.events_acked,
            "delivered": warm_delivered,
            "waited_s": warm_wait,
        },
        "tidegate_counters_delta": metrics_delta(metrics_before, metrics_after),
        "tidegate_histogram_means_ms": histogram_means_ms(
            metrics_delta(metrics_before, metrics_after)
        ),
        "signatures": verify_signatures(full.get("samples", []), e2e.destination_secret),
        "timeline_2s": timeline(c, e2e_latency, 2.0),
    }
    out["c_e2e"]["verdict"] = keeps_up(out["c_e2e"])
    ledger = out["c_e2e"]["ledger"]
    print(
        f"  c_e2e: {c.events_per_s:,.0f} events/s acked, delivered {ledger['delivered']},"
        f" lost {ledger['lost']}, kept up: {out['c_e2e']['verdict']['kept_up']}",
        flush=True,
    )
    del out["c_e2e"]["latency_ms"]
    out["d_read"] = {
        **closed_summary(d, c_resources),
        "latency_ms": summarize_ms(d.latencies_s),
        "dispatch_lag_ms": summarize_ms(d.dispatch_lag_s),
    }
    del out["d_read"]["resources"]  # shared with (c): reported there

    await long_runs(plan, run_id, tg, rc, e2e, pids, check, out)


# -- the sustained run, the step search and the soak ----------------------------------------


async def compact_counts(
    http: aiohttp.ClientSession, receiver: services.Service, prefix: str, bitmap: bool = False
) -> dict[str, Any]:
    params = {"prefix": prefix, **({"bitmap": "1"} if bitmap else {})}
    async with http.get(
        receiver.base + "/compact", params=params, timeout=aiohttp.ClientTimeout(total=60)
    ) as response:
        data: dict[str, Any] = await response.json()
        return data


async def wait_compact(
    http: aiohttp.ClientSession,
    receiver: services.Service,
    prefix: str,
    expected: int,
    limit_s: float,
) -> tuple[int, float, str]:
    """Poll the receiver until `expected` events of a windowed run arrived, none arrived
    for NO_PROGRESS_S, or `limit_s` passed: (delivered, seconds waited, why it stopped)."""
    started = time.perf_counter()
    last, last_change = -1, started
    while True:
        delivered = int((await compact_counts(http, receiver, prefix))["delivered"])
        now = time.perf_counter()
        if delivered != last:
            last, last_change = delivered, now
        waited = round(now - started, 2)
        if delivered >= expected:
            return delivered, waited, "all delivered"
        if now - last_change >= NO_PROGRESS_S:
            return delivered, waited, f"none arrived for {NO_PROGRESS_S:g} s"
        if now - started >= limit_s:
            return delivered, waited, "time limit"
        await asyncio.sleep(0.5)


def pipeline_counters(delta: dict[str, float]) -> dict[str, int]:
    """Tidegate's own counts over a window: events accepted, attempts by outcome, dead
    letters, deliveries a full lane spilled into the store, and what that leaves pending
    (accepted - succeeded - dead letters)."""
    out: dict[str, int] = {"events_ingested": 0, "dead_letters": 0, "spilled": 0}
    for name, value in delta.items():
        if name.startswith("tidegate_events_ingested_total"):
            out["events_ingested"] += int(value)
        elif name.startswith("tidegate_deliveries_spilled_total"):
            out["spilled"] += int(value)
        elif name.startswith("tidegate_dead_letters_total"):
            out["dead_letters"] += int(value)
        elif name.startswith("tidegate_delivery_attempts_total") and 'outcome="' in name:
            outcome = name.split('outcome="', 1)[1].split('"', 1)[0]
            out[f"attempts_{outcome}"] = out.get(f"attempts_{outcome}", 0) + int(value)
    out["pending_by_counters"] = (
        out["events_ingested"] - out.get("attempts_succeeded", 0) - out["dead_letters"]
    )
    return out


def window_timeline(
    loop: loadgen.WindowedOpenLoop, delivered: dict[int, LogHistogram]
) -> list[dict[str, Any]]:
    """Per window of intended send time: due, acked, errors, ack and delivery latency."""
    rows = []
    for index, stats in enumerate(loop.windows):
        ack = stats.ack.summary_ms()
        histogram = delivered.get(index, LogHistogram())
        delivery = histogram.summary_ms()
        rows.append(
            {
                "from_s": round(index * loop.window_s, 1),
                "due": stats.due,
                "acked": stats.acked,
                "errors": sum(stats.errors.values()),
                "ack_p50_ms": ack["p50"],
                "ack_p99_ms": ack["p99"],
                "delivered": histogram.n,
                "delivery_p50_ms": delivery["p50"],
                "delivery_p99_ms": delivery["p99"],
                "delivery_max_ms": delivery["max"],
            }
        )
    return rows


def memory_verdict(
    samples: list[dict[str, object]], name: str, duration_s: float
) -> dict[str, Any]:
    """RSS of `name` over the sending part of the soak: first, each minute, peak, last; a
    linear fit over the last 8 minutes (MiB/min), and the end minus minute 2."""
    sending = [row for row in samples if row["phase"] == "sending"]
    fit_from = max(0.0, duration_s - 480.0)
    growth = procstat.rss_growth(sending, name, fit_from)

    def rss_at(t_s: float) -> float | None:
        rows = [r for r in sending if isinstance(r.get(name), dict)]
        if not rows:
            return None
        nearest = min(rows, key=lambda r: abs(float(r["t_s"]) - t_s))  # type: ignore[arg-type]
        value = nearest[name].get("rss_mib")  # type: ignore[union-attr]
        return None if value is None else float(value)

    minute2 = rss_at(min(120.0, duration_s))
    last = growth.get("last_mib")
    growth["per_minute_mib"] = [rss_at(60.0 * m) for m in range(int(duration_s // 60) + 1)]
    growth["minute_2_mib"] = minute2
    growth["end_minus_minute_2_mib"] = (
        None if last is None or minute2 is None else round(last - minute2, 1)
    )
    slope = growth.get("slope_mib_per_min")
    if slope is not None and minute2:
        fitted = slope * (duration_s - fit_from) / 60
        growth["fitted_growth_mib"] = round(fitted, 1)
        growth["no_growth"] = fitted <= GROWTH_TOLERANCE * minute2
    peak = growth.get("peak_mib")
    growth["within_250_mb"] = None if peak is None else peak * MIB <= 250e6
    return growth


async def long_runs(
    plan: Plan,
    run_id: str,
    tg: services.Service,
    rc: services.Service,
    e2e: services.Tenant,
    pids: Callable[[], dict[str, int | Sequence[int]]],
    check: Callable[[str], None],
    out: dict[str, Any],
) -> None:
    """The step search, the sustained run and the soak (each a WindowedOpenLoop to the
    tenant with a webhook destination), filling `out`."""
    async with contextlib.AsyncExitStack() as stack:
        control = await stack.enter_async_context(loadgen.session(8))
        http = await stack.enter_async_context(loadgen.client(256))

        async def windowed(
            key: str,
            rate: float,
            duration_s: float,
            window_s: float,
            drain_limit_s: float,
            soak: bool = False,
        ) -> dict[str, Any]:
            prefix = f"{run_id}-{key}"
            loop = loadgen.WindowedOpenLoop(
                http,
                loadgen.timed_track_target(tg.base, e2e.write_key, prefix),
                name=key,
                rate=rate,
                duration_s=duration_s,
                window_s=window_s,
                max_in_flight=plan.max_in_flight,
            )
            sampler: procstat.Sampler | None = None
            phase = ["sending"]
            stop = asyncio.Event()
            sampling: asyncio.Task[None] | None = None
            if soak:
                own = {
                    k: v
                    for k, v in pids().items()
                    if k == "tidegate" or (isinstance(v, int) and k != "baseline")
                }
                sampler = procstat.Sampler({**own, "load_generator": os.getpid()})
                sampling = asyncio.create_task(
                    sample_loop(sampler, loop, phase, stop, plan.sample_every_s)
                )
            metrics_before = await scrape_metrics(control, tg.base)
            with Window(pids()) as window:
                await loop.run()
            resources = window.resources
            check(key)
            at_end = int((await compact_counts(control, rc, prefix))["delivered"])
            phase[0] = "draining"
            acked = sum(w.acked for w in loop.windows)
            with Window(pids()) as window:
                delivered, waited, why = await wait_compact(
                    control, rc, prefix, acked, drain_limit_s
                )
            drain_resources = window.resources
            stop.set()
            if sampling is not None:
                await sampling
            metrics_after = await scrape_metrics(control, tg.base)
            full = await compact_counts(control, rc, prefix, bitmap=True)
            seen = Bitmap(data=base64.b64decode(full.get("bitmap", "")))
            lost = loop.acked.and_not(seen)
            unacked = seen.and_not(loop.acked)
            totals = loop.totals()
            histograms = {int(w): LogHistogram.from_json(h) for w, h in full["windows"].items()}
            every = LogHistogram()
            for histogram in histograms.values():
                every.update(histogram)
            delta = metrics_delta(metrics_before, metrics_after)
            lost_count = lost.count()
            result: dict[str, Any] = {
                "rate": rate,
                "duration_s": duration_s,
                "window_s": window_s,
                **totals,
                "events_acked": totals["acked"],
                "delivery_latency_ms": every.summary_ms(),
                "delivered_at_end_of_sending": at_end,
                "delivery_rate_while_sending_per_s": round(at_end / loop.elapsed_s, 1),
                "ledger": {
                    "sent": totals["sent"],
                    "acknowledged": totals["acked"],
                    "errors": sum(totals["errors"].values()),
                    "unfinished": totals["unfinished"],
                    "delivered": totals["acked"] - lost_count,
                    "lost": lost_count,
                    "delivered_but_not_acknowledged": unacked.count(),
                    "duplicate_deliveries": int(full["duplicates"]),
                },
                "lost_examples": [f"{prefix}-{i}" for i in lost.indices(10)],
                "drain": {
                    "waited_s": waited,
                    "limit_s": drain_limit_s,
                    "ended": why,
                    "delivered_during_drain": delivered - at_end,
                    "delivery_rate_per_s": round((delivered - at_end) / waited, 1)
                    if waited
                    else 0.0,
                    "resources": drain_resources,
                },
                "tidegate_counters": pipeline_counters(delta),
                "tidegate_histogram_means_ms": histogram_means_ms(delta),
                "resources": resources,
                "timeline": window_timeline(loop, histograms),
            }
            # not delivered within the wait, yet still pending in Tidegate: late, not dropped
            pending = max(0, result["tidegate_counters"]["pending_by_counters"])
            result["ledger"]["still_pending_per_tidegate"] = min(lost_count, pending)
            result["ledger"]["unaccounted"] = max(0, lost_count - pending)
            if 0 < lost_count <= 10_000:  # the read API pages 500 at a time
                result["lost_accounting"] = await account_for_missing(control, tg.base, e2e, set())
            result["verdict"] = keeps_up(result, "timeline")
            if sampler is not None:
                result["samples"] = sampler.samples
                result["memory"] = {
                    name: memory_verdict(sampler.samples, name, duration_s)
                    for name in ("tidegate", "receiver", "load_generator")
                }
            verdict = result["verdict"]
            print(
                f"  {key}: offered {rate:,.0f}/s, acked {totals['events_per_s']:,.0f}/s,"
                f" errors {result['ledger']['errors']}, delivered while sending"
                f" {result['delivery_rate_while_sending_per_s']:,.0f}/s, lost {lost_count}"
                f" (waited {waited} s: {why}), kept up: {verdict['kept_up']}",
                flush=True,
            )
            return result

        tried: list[dict[str, Any]] = []
        if plan.step_rates:
            out["c_steps"] = []
            for rate in plan.step_rates:
                print(f"(c) step: open loop {rate:g} events/s for {plan.step_s:g} s", flush=True)
                step = await windowed(f"st{rate:g}", rate, plan.step_s, 2.0, plan.long_drain_s)
                out["c_steps"].append(step)
                tried.append({"rate": rate, "kept_up": step["verdict"]["kept_up"]})
                if not step["verdict"]["kept_up"]:
                    break
        rate = plan.sustained_rate
        print(f"(c) sustained: open loop {rate:g} events/s for {plan.sustained_s:g} s", flush=True)
        out["c_sustained"] = await windowed("su", rate, plan.sustained_s, 2.0, plan.long_drain_s)
        tried.append({"rate": rate, "kept_up": out["c_sustained"]["verdict"]["kept_up"]})
        kept = [t["rate"] for t in tried if t["kept_up"]]
        out["c_max_kept_up"] = {"tried": tried, "highest_rate_kept_up": max(kept, default=None)}

        if plan.soak_s > 0:
            print(
                f"(e) soak: open loop {plan.soak_rate:g} events/s for {plan.soak_s:g} s,"
                f" RSS every {plan.sample_every_s:g} s",
                flush=True,
            )
            out["e_soak"] = await windowed(
                "so", plan.soak_rate, plan.soak_s, 60.0, plan.long_drain_s, soak=True
            )


async def sample_loop(
    sampler: procstat.Sampler,
    loop: loadgen.WindowedOpenLoop,
    phase: list[str],
    stop: asyncio.Event,
    every_s: float = 10.0,
) -> None:
    """Sample every `every_s` until `stop` (once more then); a progress line a minute."""
    t0 = time.monotonic()
    n = 0
    while True:
        row = sampler.sample(time.monotonic() - t0, phase[0])
        if n % 6 == 0 and n:
            rss = row.get("tidegate", {})
            acked = sum(w.acked for w in loop.windows)
            print(
                f"  soak {row['t_s']:.0f} s ({phase[0]}): {loop.dispatched:,} due,"
                f" {acked:,} acked, {loop.in_flight} in flight, tidegate RSS"
                f" {rss.get('rss_mib') if isinstance(rss, dict) else None} MiB",
                flush=True,
            )
        n += 1
        if stop.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                stop.wait(), timeout=max(0.0, t0 + n * every_s - time.monotonic())
            )


def machine_info() -> dict[str, Any]:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    nproc, free = str(os.cpu_count()), "(free unavailable)"
    nproc_bin, free_bin = shutil.which("nproc"), shutil.which("free")
    try:
        if nproc_bin:
            nproc = subprocess.run(
                [nproc_bin], capture_output=True, text=True, check=True, timeout=5
            ).stdout.strip()
        if free_bin:
            free = subprocess.run(
                [free_bin, "-g"], capture_output=True, text=True, check=True, timeout=5
            ).stdout.rstrip()
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "nproc": nproc,
        "cpu_model": model,
        "free_g": free,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "event_loop": loop_name(),
        "aiohttp": aiohttp.__version__,
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
    }


def head_commit() -> str | None:
    """The commit .git/HEAD names (read from the files, not by running git)."""
    git = ROOT / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head.removeprefix("ref: ")
        if (git / ref).exists():
            return (git / ref).read_text().strip()
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    except OSError:
        return None
    return None


def command_line(args: argparse.Namespace) -> str:
    if os.environ.get("MAKELEVEL"):
        return (
            "make bench"
            + ("" if args.engine == engines.EMBEDDED else f" ENGINE={args.engine}")
            + (" QUICK=1" if args.quick else "")
            + (" SOAK=0" if args.soak_seconds == 0 and not args.quick else "")
        )
    return " ".join([".venv/bin/python", "bench/run.py", *sys.argv[1:]])


def run_engine(
    plan: Plan, name: str, run_id: str, work: Path, bl: services.Service
) -> dict[str, Any]:
    """Every scenario of `plan` on engine `name`: its own Tidegate process (fresh data dir,
    fresh database and topics) and receiver; the baseline app is shared. Stops what it
    started, and reports a failure rather than raising it."""
    tag = f"{run_id}{'pk' if name == engines.POSTGRES_KAFKA else 'em'}"
    engine_dir = work / engines.slug(name)
    engine_dir.mkdir(parents=True, exist_ok=True)
    print(f"== engine {name}", flush=True)
    results: dict[str, Any] = {}
    info: dict[str, Any] = {}
    final: dict[str, Any] = {}
    tidegate_memory: dict[str, float] = {}
    tidegate_cpu_total: float | None = None
    failure: str | None = None
    teardown_error: str | None = None
    tg: services.Service | None = None
    rc: services.Service | None = None
    started_services: list[services.Service] = []
    was_alive = False
    wall = time.monotonic()
    try:
        with engines.provision(name, engine_dir) as engine:
            info = dict(engine.info)
            tg = services.tidegate(
                engine_dir / "data", free_port(), engine_dir, engine.env, processes=plan.processes
            )
            rc = services.receiver(free_port(), engine_dir)
            try:
                for service in (tg, rc):
                    started_services.append(service.start())
                for service in (tg, rc):
                    service.wait_ready()
                ingest = services.create_tenant(tg, f"bench-ingest-{tag}", None)
                e2e = services.create_tenant(tg, f"bench-e2e-{tag}", rc.base + "/hook")
                # bounded: setup + scenarios + waits, with generous room for a slow machine
                budget_s = (
                    900.0
                    + plan.sustained_s
                    + plan.soak_s
                    + plan.step_s * len(plan.step_rates)
                    + (plan.long_drain_s + 30) * (len(plan.step_rates) + 2)
                )
                run_async(
                    bounded(measure(plan, tag, tg, rc, bl, ingest, e2e, engine, results), budget_s)
                )
                if tg.alive():
                    found = process_group(tg, plan.processes)
                    group = (found,) if isinstance(found, int) else found
                    readings = [procstat.memory_mib(pid) for pid in group]
                    # the target is per process: the largest; the sum beside it
                    tidegate_memory = {
                        key: max(r[key] for r in readings) for key in ("VmRSS", "VmHWM")
                    }
                    tidegate_memory["VmRSS_sum"] = round(sum(r["VmRSS"] for r in readings), 1)
                    tidegate_memory["processes"] = len(group)
                    tidegate_cpu_total = round(sum(procstat.cpu_seconds(p) for p in group), 2)
                else:
                    failure = f"tidegate exited during the run (code {tg.proc and tg.proc.poll()})"
                final = engine.final()
            except Exception as exc:  # noqa: BLE001 - reported, then processes are stopped
                failure = f"{type(exc).__name__}: {exc}"
                print(f"bench failed on {name}: {failure}", file=sys.stderr)
            finally:
                was_alive = tg.alive()
                for service in reversed(started_services):
                    service.stop()
    except Exception as exc:  # noqa: BLE001 - setting the engine up or tearing it down
        message = f"{type(exc).__name__}: {exc}"
        if tg is None:
            failure = failure or f"setting up {name}: {message}"
        else:
            teardown_error = message
        print(f"bench: engine {name}: {message}", file=sys.stderr)
    result: dict[str, Any] = {
        "engine": name,
        "description": engines.DESCRIPTIONS[name],
        "info": info,
        "run_tag": tag,
        "elapsed_s": round(time.monotonic() - wall, 1),
        "failure": failure,
        "teardown_error": teardown_error,
        "scenarios": results,
        "engine_at_end": final,
        "tidegate": {
            "pid_cpu_s_total": tidegate_cpu_total,
            "memory_mib": tidegate_memory,
            "alive_at_end": was_alive,
            "sigterm_exit_code": tg.exit_code if tg else None,
            "sigterm_stop_s": tg.stop_s if tg else None,
            "log": services.log_problems(tg) if tg else {},
        },
        "receiver": {"sigterm_exit_code": rc.exit_code if rc else None},
    }
    if failure is not None:
        result["logs_tail"] = {s.name: s.log_tail() for s in started_services}
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--processes",
        type=int,
        default=(os.cpu_count() or 1) + 1,
        help="tidegate serve --processes N (default: this machine's cores + 1: an api"
        " process per core and the worker; 1 runs both roles in one process)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="about 2 minutes: shorter windows, no steps, no soak"
    )
    parser.add_argument(
        "--engine",
        choices=engines.CHOICES,
        default=engines.EMBEDDED,
        help="embedded (default), postgres+kafka, or both side by side ((a), (c), (d) only)",
    )
    parser.add_argument("--rate", type=float, default=1200.0, help="(c) events/s (open loop)")
    parser.add_argument("--e2e-seconds", type=float, help="(c) duration (default 20, quick 10)")
    parser.add_argument("--burst-seconds", type=float, help="(a), (b), baseline duration")
    parser.add_argument("--concurrency", type=int, default=64, help="(a) and baseline senders")
    parser.add_argument(
        "--wide-concurrency",
        type=int,
        default=256,
        help="(a) run again with this many senders, to measure it at saturation (0 skips)",
    )
    parser.add_argument("--batch-concurrency", type=int, default=8, help="(b) senders")
    parser.add_argument(
        "--wide-batch-concurrency",
        type=int,
        default=32,
        help="(b) run again with this many senders, to measure it at saturation (0 skips)",
    )
    parser.add_argument("--read-rate", type=float, default=20.0, help="(d) requests/s")
    parser.add_argument(
        "--sustained-rate",
        type=float,
        default=5000.0,
        help="(c) sustained: events/s (open loop, default 5000)",
    )
    parser.add_argument(
        "--sustained-seconds", type=float, help="(c) sustained: duration (default 30, quick 10)"
    )
    parser.add_argument(
        "--step-rates",
        help="(c) step search: comma-separated events/s below the sustained rate, 10 s each,"
        " stopping at the first that does not keep up (default 1200,2400,3600; not in"
        " --quick or --engine both; '' skips)",
    )
    parser.add_argument(
        "--soak-seconds",
        type=float,
        help="(e) soak duration (default 600; 0 skips it, as --quick and --engine both do)",
    )
    parser.add_argument(
        "--soak-rate", type=float, default=5000.0, help="(e) soak events/s (default 5000)"
    )
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=4096,
        help="sustained, steps and soak: requests outstanding at most; one due beyond it is"
        " not sent and counts as an error",
    )
    parser.add_argument(
        "--no-wrk", action="store_true", help="skip the baseline and (a) under wrk (if installed)"
    )
    parser.add_argument("--no-docs", action="store_true", help="do not append to the docs")
    parser.add_argument("--keep-data", action="store_true", help="keep the temp data dir")
    args = parser.parse_args()
    plan = Plan.from_args(args)
    rates = (plan.rate, plan.read_rate, plan.sustained_rate, plan.soak_rate, *plan.step_rates)
    if min(rates) <= 0 or plan.concurrency < 1 or plan.max_in_flight < 1:
        parser.error("rates, concurrency and --max-in-flight must be positive")
    if plan.soak_s < 0:
        parser.error("--soak-seconds must be >= 0")
    try:
        for name in plan.engines:
            engines.preflight(name)
    except engines.EngineUnavailable as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2

    started = datetime.now(UTC)
    run_id = f"bench{started:%H%M%S}{uuid.uuid4().hex[:6]}"
    machine = machine_info()
    work = Path(tempfile.mkdtemp(prefix="tidegate-bench-"))
    print(
        f"tidegate bench {run_id}: work dir {work}, engines {', '.join(plan.engines)}", flush=True
    )

    bl = services.baseline(free_port(), work, workers=plan.processes)
    runs: list[dict[str, Any]] = []
    failure: str | None = None
    wall = time.monotonic()
    try:
        bl.start().wait_ready()
        for name in plan.engines:
            runs.append(run_engine(plan, name, run_id, work, bl))
            ensure_alive(bl, f"the {name} run")
    except Exception as exc:  # noqa: BLE001 - reported, then processes are stopped
        failure = f"{type(exc).__name__}: {exc}"
        print(f"bench failed: {failure}", file=sys.stderr)
    finally:
        bl.stop()
    elapsed = round(time.monotonic() - wall, 1)
    failures = [f"{r['engine']}: {r['failure']}" for r in runs if r["failure"]]
    if failure is None and failures:
        failure = "; ".join(failures)

    document: dict[str, Any] = {
        "run_id": run_id,
        "started_utc": started.isoformat(timespec="seconds"),
        "command": command_line(args),
        "engine": args.engine,
        "commit": head_commit(),
        "plan": plan.__dict__,
        "machine": machine,
        "elapsed_s": elapsed,
        "failure": failure,
        "engines": runs,
        "baseline": {"sigterm_exit_code": bl.exit_code},
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out_path = RESULTS_DIR / f"{started:%Y%m%dT%H%M%SZ}.json"
    out_path.write_text(json.dumps(document, indent=2, default=_json_default) + "\n")
    markdown = report.markdown(document)
    print()
    print(markdown)
    print(f"results: {out_path.relative_to(ROOT)}")
    if not args.no_docs and failure is None:
        report.append_to_docs(DOCS, document, markdown)
        print(f"appended to {DOCS.relative_to(ROOT)}")
    if args.keep_data:
        print(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failure is not None else 0


def _json_default(value: object) -> object:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, set | frozenset):
        return sorted(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


if __name__ == "__main__":
    sys.exit(main())
