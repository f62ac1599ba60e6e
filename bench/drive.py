"""One scenario at a time, with the CPU of each process: for comparing a change with its
parent, where `make bench`'s full run takes too long and moves too much between runs.

  track    closed loop of POST /v1/track (scenario (a)) for --seconds, --senders
  batch    closed loop of POST /v1/batch of 100 (scenario (b)), then the wait until the
           router has recorded every event (its CPU counted separately)
  e2e      open loop of POST /v1/track at --rate for --seconds to a tenant with one webhook
           destination (scenario (c)), then the wait for the remaining deliveries

Prints one JSON line: events/s (acked; delivered while sending for e2e) and µs of CPU per
event for process 0, the api processes together, the generator (this process) and the
receiver, plus `api_per_gen`: the api processes' CPU over the generator's, which cancels
most of a VM's drift in speed between runs (the generator runs the same code in both).

To compare code: run it with PYTHONPATH=<worktree>/src (the server is started with this
process's environment), alternating the two a few times.

  .venv/bin/python bench/drive.py e2e --rate 5000 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import loadgen, services
from bench.common import free_port, run_async
from bench.procstat import children, safe_cpu, safe_rss
from bench.run import catch_up, compact_counts, wait_compact
from bench.stats import LogHistogram


def _cpu(pids: list[int]) -> float:
    return sum(safe_cpu(pid) or 0.0 for pid in pids)


class Meter:
    """CPU seconds per process group between `start()` and `stop()`."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self.before: dict[str, float] = {}

    def start(self) -> None:
        self.before = {name: _cpu(pids) for name, pids in self.groups.items()}

    def stop(self) -> dict[str, float]:
        return {name: _cpu(pids) - self.before[name] for name, pids in self.groups.items()}


def _connections(pids: list[int], port: int) -> list[int]:
    """Established TCP connections to `port` held by each of `pids` (from /proc)."""
    established: set[str] = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
            established.add(fields[9])  # the socket's inode
    counts = []
    for pid in pids:
        inodes = set()
        with contextlib.suppress(FileNotFoundError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(FileNotFoundError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
        counts.append(len(inodes & established))
    return counts


def _per_event_us(cpu: dict[str, float], events: int) -> dict[str, float]:
    return {f"{name}_us": round(s / max(1, events) * 1e6, 1) for name, s in cpu.items()}


async def drive(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    rc = services.receiver(free_port(), work).start()
    tg = services.tidegate(work / "data", free_port(), work, processes=args.processes).start()
    try:
        rc.wait_ready()
        tg.wait_ready()
        url = f"{rc.base}/hook" if args.mode == "e2e" else None
        tenant = services.create_tenant(tg, "drive", url)
        groups = {
            "p0": [tg.pid],
            "api": children(tg.pid),
            "gen": [os.getpid()],
            "rc": [rc.pid],
        }
        meter = Meter(groups)
        shared = loadgen.client(256) if args.shared_pool else None

        def client(connections: int) -> loadgen.rawhttp.Client:
            # new connections per phase, unless --shared-pool (make bench before 16th session)
            return shared if shared is not None else loadgen.client(connections)

        http = client(args.senders)
        prefix = f"d{int(time.time())}"
        out: dict[str, Any] = {"mode": args.mode, "processes": args.processes}
        async with loadgen.session(4) as control:
            # warm up: keys, caches, connections
            warm = loadgen.track_target(tg.base, tenant.write_key, prefix + "w")
            await loadgen.closed_loop(http, warm, name="warm", concurrency=8, duration_s=1.0)
            await asyncio.sleep(1.0)
            if args.mode in ("track", "batch"):
                if args.track_first:  # the server's state after (a), as in make bench
                    first = loadgen.track_target(tg.base, tenant.write_key, prefix + "t")
                    first_http = client(256)
                    await loadgen.closed_loop(
                        first_http,
                        first,
                        name="first",
                        concurrency=256,
                        duration_s=args.track_first,
                    )
                    if shared is None:
                        await first_http.close()
                    await catch_up(control, tg.base, 120.0)
                rounds = []
                for round_ in range(args.rounds):
                    target = (
                        loadgen.track_target(tg.base, tenant.write_key, f"{prefix}r{round_}")
                        if args.mode == "track"
                        else loadgen.batch_target(
                            tg.base, tenant.write_key, f"{prefix}r{round_}", 100
                        )
                    )
                    if shared is None:
                        await http.close()
                    http = client(args.senders)
                    if args.warmup_seconds:  # as make bench does, the same messageIds
                        await loadgen.closed_loop(
                            http,
                            target,
                            name="warmup",
                            concurrency=args.senders,
                            duration_s=args.warmup_seconds,
                        )
                    meter.start()
                    result = await loadgen.closed_loop(
                        http,
                        target,
                        name=args.mode,
                        concurrency=args.senders,
                        duration_s=args.seconds,
                    )
                    cpu = meter.stop()
                    events = result.events_acked
                    row: dict[str, Any] = dict(
                        connections=_connections(groups["api"], tg.port),
                        events_per_s=round(result.events_per_s),
                        errors=dict(result.errors),
                        **_per_event_us(cpu, events),
                    )
                    meter.start()
                    row["router_catch_up_s"] = await catch_up(control, tg.base, 120.0)
                    row["p0_after_us"] = round(meter.stop()["p0"] / max(1, events) * 1e6, 1)
                    if shared is None:
                        await http.close()
                    rounds.append(row)
                    print(json.dumps(row), flush=True)
                out.update(rounds[-1])
            else:
                target = loadgen.timed_track_target(tg.base, tenant.write_key, prefix)
                run = loadgen.WindowedOpenLoop(
                    http,
                    target,
                    name="e2e",
                    rate=args.rate,
                    duration_s=args.seconds,
                    window_s=2.0,
                    max_in_flight=4096,
                )
                meter.start()
                rss: list[list[float | None]] = []

                async def sample_rss() -> None:
                    while True:
                        rss.append([safe_rss(pid) for pid in [tg.pid, *groups["api"]]])
                        await asyncio.sleep(args.rss_every)

                sampler = asyncio.create_task(sample_rss()) if args.rss_every else None
                await run.run()
                if sampler is not None:
                    sampler.cancel()
                    out["rss_mib_p0_api"] = rss
                cpu = meter.stop()
                totals = run.totals()
                delivered = int((await compact_counts(control, rc, prefix))["delivered"])
                got, waited, why = await wait_compact(control, rc, prefix, totals["acked"], 60)
                compact = await compact_counts(control, rc, prefix)
                p99s = [
                    LogHistogram.from_json(h).percentile_s(99) * 1000
                    for _w, h in sorted(compact["windows"].items(), key=lambda kv: int(kv[0]))
                ]
                out.update(
                    acked=totals["acked"],
                    errors=totals["errors"],
                    delivered_per_s=round(delivered / args.seconds),
                    delivered=got,
                    wait_s=waited,
                    wait_end=why,
                    ack_p99_ms=totals["ack_latency_ms"].get("p99"),
                    delivery_p99_ms_by_window=[round(p) for p in p99s],
                    **_per_event_us(cpu, totals["acked"]),
                )
        gen = max(cpu["gen"], 1e-9)
        out["api_per_gen"] = round(cpu["api"] / gen, 2)
        out["p0_per_gen"] = round(cpu["p0"] / gen, 2)
        return out
    finally:
        tg.stop()
        rc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=("track", "batch", "e2e"))
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--senders", type=int, default=64)
    parser.add_argument("--rate", type=float, default=5000.0)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument(
        "--shared-pool", action="store_true", help="one pool of 256 connections for all phases"
    )
    parser.add_argument("--rss-every", type=float, default=0.0, help="e2e: sample RSS (s)")
    parser.add_argument("--keep-log", help="copy the server's log to this path at the end")
    parser.add_argument("--warmup-seconds", type=float, default=0.0)
    parser.add_argument("--track-first", type=float, default=0.0, help="s of (a) before")
    parser.add_argument(
        "--rounds", type=int, default=1, help="track/batch: runs on the same server, in turn"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tidegate-drive-") as tmp:
        try:
            print(json.dumps(run_async(drive(args, Path(tmp)))), flush=True)
        finally:
            log = Path(tmp) / "tidegate.log"
            if args.keep_log and log.exists():
                shutil.copyfile(log, args.keep_log)


if __name__ == "__main__":
    main()
