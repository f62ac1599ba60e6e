"""The load generator: closed-loop bursts and open-loop constant-rate schedules.

Closed loop: N senders, each sends its next request when the previous one answers.
It finds how much the server can take; its latencies are service times under that
saturation, not what a client at a given rate would see.

Open loop: request i is due at t0 + i/rate whatever happened before, and its latency
is measured from that intended time, not from when it was actually sent. A stalled
server (or a stalled generator) therefore shows up as latency instead of silently
lowering the offered rate (no coordinated omission). How late the generator itself
dispatched each request is recorded separately (`dispatch_lag`), so a saturated
generator cannot pass for a slow server.

Long open loops (the sustained run, the soak) use `WindowedOpenLoop`: the same schedule,
with per-window latency histograms and a bitmap of acknowledged indices instead of a
record per event, and a cap on requests in flight, so the generator's memory stays
bounded over any duration.

Every loop is bounded by a request count and a deadline.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from stats import Bitmap, LogHistogram

OK_BODY = b'{"success":true}'


@dataclass(frozen=True)
class Request:
    body: bytes | None
    message_ids: tuple[str, ...]


@dataclass
class Target:
    """What to send: method, URL, headers, a body per request index, what counts as OK."""

    method: str
    url: str
    headers: dict[str, str]
    make: Callable[[int], Request]
    ok: Callable[[int, bytes], bool]
    timeout_s: float = 10.0
    # (i, intended send time (wall clock), window) -> Request, for WindowedOpenLoop
    make_timed: Callable[[int, float, int], Request] | None = None


@dataclass
class Result:
    name: str
    mode: str
    offered: str
    elapsed_s: float = 0.0
    requests_sent: int = 0
    requests_ok: int = 0
    events_sent: int = 0
    events_acked: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    unfinished: int = 0
    latencies_s: list[float] = field(default_factory=list)
    dispatch_lag_s: list[float] = field(default_factory=list)
    # open loop only: messageId -> intended send time (wall clock), for acknowledged events
    acked_intended_wall: dict[str, float] = field(default_factory=dict)
    unacked_ids: set[str] = field(default_factory=set)
    started_wall: float = 0.0
    ended_wall: float = 0.0

    @property
    def events_per_s(self) -> float:
        return self.events_acked / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def requests_per_s(self) -> float:
        return self.requests_ok / self.elapsed_s if self.elapsed_s else 0.0


def basic_auth(username: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:".encode()).decode()


def track_target(base: str, write_key: str, prefix: str) -> Target:
    """POST /v1/track, one event per request, messageId = PREFIX-i."""

    def make(i: int) -> Request:
        mid = f"{prefix}-{i}"
        body = (
            f'{{"type":"track","userId":"u-{i % 1000}","event":"Bench Event",'
            f'"messageId":"{mid}","properties":{{"i":{i}}}}}'
        )
        return Request(body.encode(), (mid,))

    return Target(
        "POST",
        base + "/v1/track",
        {"authorization": basic_auth(write_key), "content-type": "application/json"},
        make,
        lambda status, body: status == 200 and body == OK_BODY,
    )


def batch_target(base: str, write_key: str, prefix: str, size: int) -> Target:
    """POST /v1/batch with `size` track messages per request."""

    def make(i: int) -> Request:
        ids = tuple(f"{prefix}-{i}-{j}" for j in range(size))
        messages = ",".join(
            f'{{"type":"track","userId":"u-{j}","event":"Bench Event",'
            f'"messageId":"{mid}","properties":{{"j":{j}}}}}'
            for j, mid in enumerate(ids)
        )
        return Request(('{"batch":[' + messages + "]}").encode(), ids)

    return Target(
        "POST",
        base + "/v1/batch",
        {"authorization": basic_auth(write_key), "content-type": "application/json"},
        make,
        lambda status, body: status == 200 and body == OK_BODY,
    )


def get_target(url: str, headers: dict[str, str], ok: Callable[[int, bytes], bool]) -> Target:
    return Target("GET", url, headers, lambda _i: Request(None, ()), ok)


def session(connections: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=0, force_close=False)
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=("User-Agent",),
    )


async def _send(http: aiohttp.ClientSession, target: Target, request: Request) -> str | None:
    """None if the answer is what `target.ok` expects, else a short error label."""
    try:
        async with http.request(
            target.method,
            target.url,
            data=request.body,
            headers=target.headers,
            timeout=aiohttp.ClientTimeout(total=target.timeout_s),
        ) as response:
            body = await response.read()
            return None if target.ok(response.status, body) else f"HTTP {response.status}"
    except TimeoutError:
        return "timeout"
    except aiohttp.ClientError as exc:
        return type(exc).__name__
    except OSError as exc:
        return f"OSError {exc.errno}"


async def closed_loop(
    http: aiohttp.ClientSession,
    target: Target,
    *,
    name: str,
    concurrency: int,
    duration_s: float,
    max_requests: int = 5_000_000,
) -> Result:
    result = Result(name, "closed", f"{concurrency} concurrent senders, {duration_s:g} s")
    counter = itertools.count()
    start = time.perf_counter()
    deadline = start + duration_s
    result.started_wall = time.time()

    async def sender() -> None:
        while time.perf_counter() < deadline:
            i = next(counter)
            if i >= max_requests:
                return
            request = target.make(i)
            result.requests_sent += 1
            result.events_sent += len(request.message_ids)
            sent = time.perf_counter()
            error = await _send(http, target, request)
            done = time.perf_counter()
            if error is None:
                result.requests_ok += 1
                result.events_acked += len(request.message_ids)
                result.latencies_s.append(done - sent)
            else:
                result.errors[error] += 1

    # each sender stops at the deadline after its request in flight answers (<= timeout)
    await asyncio.gather(*(sender() for _ in range(concurrency)))
    result.elapsed_s = time.perf_counter() - start
    result.ended_wall = time.time()
    return result


async def open_loop(
    http: aiohttp.ClientSession,
    target: Target,
    *,
    name: str,
    rate: float,
    duration_s: float,
    grace_s: float = 15.0,
    keep_ids: bool = False,
) -> Result:
    """Send `rate` requests/s for `duration_s` on a fixed schedule; wait at most `grace_s`
    after the last one for the answers still outstanding (they count as `unfinished`)."""
    count = int(rate * duration_s)
    result = Result(name, "open", f"{rate:g} req/s for {duration_s:g} s")
    tasks: set[asyncio.Task[None]] = set()
    t0 = time.perf_counter()
    wall0 = time.time()
    result.started_wall = wall0

    async def one(i: int, intended: float) -> None:
        result.dispatch_lag_s.append(time.perf_counter() - intended)
        request = target.make(i)
        result.requests_sent += 1
        result.events_sent += len(request.message_ids)
        try:
            error = await _send(http, target, request)
        except asyncio.CancelledError:
            if keep_ids:
                result.unacked_ids.update(request.message_ids)
            raise
        done = time.perf_counter()
        if error is None:
            result.requests_ok += 1
            result.events_acked += len(request.message_ids)
            result.latencies_s.append(done - intended)
            if keep_ids:
                intended_wall = wall0 + (intended - t0)
                for mid in request.message_ids:
                    result.acked_intended_wall[mid] = intended_wall
        else:
            result.errors[error] += 1
            if keep_ids:
                result.unacked_ids.update(request.message_ids)

    for i in range(count):
        intended = t0 + i / rate
        delay = intended - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(i, intended))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        _done, pending = await asyncio.wait(set(tasks), timeout=grace_s + target.timeout_s)
        for task in pending:
            task.cancel()
        result.unfinished = len(pending)
        if pending:
            await asyncio.wait(pending, timeout=2)
    result.elapsed_s = max(duration_s, time.perf_counter() - t0)
    result.ended_wall = time.time()
    return result


# -- long open loops: per-window aggregates instead of per-event records ------------------


def timed_track_target(base: str, write_key: str, prefix: str) -> Target:
    """POST /v1/track, messageId = PREFIX-i, with the intended send time (`t`, wall clock)
    and its window (`w`) in the properties: the receiver aggregates such events itself
    (a bit per index, a latency histogram per window) instead of keeping each one."""
    target = track_target(base, write_key, prefix)

    def make_timed(i: int, intended_wall: float, window: int) -> Request:
        mid = f"{prefix}-{i}"
        body = (
            f'{{"type":"track","userId":"u-{i % 1000}","event":"Bench Event",'
            f'"messageId":"{mid}","properties":{{"i":{i},"t":{intended_wall:.6f},"w":{window}}}}}'
        )
        return Request(body.encode(), (mid,))

    target.make_timed = make_timed
    return target


@dataclass
class WindowStats:
    """What happened to the requests due in one window of the schedule."""

    due: int = 0
    sent: int = 0
    acked: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    ack: LogHistogram = field(default_factory=LogHistogram)
    dispatch_lag: LogHistogram = field(default_factory=LogHistogram)


SHED = "not sent: generator at its in-flight cap"


class WindowedOpenLoop:
    """`open_loop` for long runs: `rate` requests/s for `duration_s`, each due at
    t0 + i/rate and timed from then, with bounded memory whatever the duration: latencies
    go to per-window histograms, acknowledgements to a bitmap, and at most
    `max_in_flight` requests are outstanding. A request due while the cap is reached is
    not sent and counts as an error (`SHED`): a server that cannot take the rate shows up
    as errors, and the generator's memory stays bounded. `result` can be read while it
    runs. Stops by itself: a fixed request count, then at most `grace_s` + the request
    timeout for the answers still outstanding."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        target: Target,
        *,
        name: str,
        rate: float,
        duration_s: float,
        window_s: float,
        max_in_flight: int,
        grace_s: float = 15.0,
    ) -> None:
        assert target.make_timed is not None, "needs a timed target"
        self.http, self.target, self.name = http, target, name
        self.rate, self.duration_s, self.window_s = rate, duration_s, window_s
        self.max_in_flight, self.grace_s = max_in_flight, grace_s
        self.count = int(rate * duration_s)
        self.windows: list[WindowStats] = [
            WindowStats() for _ in range(max(1, math.ceil(duration_s / window_s)))
        ]
        self.acked = Bitmap(self.count)
        self.in_flight = 0
        self.peak_in_flight = 0
        self.unfinished = 0
        self.started_wall = 0.0
        self.elapsed_s = 0.0
        self.dispatched = 0

    def _window(self, i: int) -> int:
        return min(int(i / self.rate / self.window_s), len(self.windows) - 1)

    async def _one(self, i: int, intended: float, intended_wall: float) -> None:
        w = self._window(i)
        stats = self.windows[w]
        stats.dispatch_lag.record(max(0.0, time.perf_counter() - intended))
        assert self.target.make_timed is not None
        request = self.target.make_timed(i, intended_wall, w)
        stats.sent += 1
        try:
            error = await _send(self.http, self.target, request)
        finally:
            self.in_flight -= 1
        if error is None:
            stats.acked += 1
            stats.ack.record(time.perf_counter() - intended)
            self.acked.set(i)
        else:
            stats.errors[error] += 1

    async def run(self) -> WindowedOpenLoop:
        tasks: set[asyncio.Task[None]] = set()
        t0 = time.perf_counter()
        self.started_wall = wall0 = time.time()
        for i in range(self.count):
            intended = t0 + i / self.rate
            delay = intended - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            self.dispatched = i + 1
            stats = self.windows[self._window(i)]
            stats.due += 1
            if self.in_flight >= self.max_in_flight:
                stats.errors[SHED] += 1
                continue
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            task = asyncio.create_task(self._one(i, intended, wall0 + (intended - t0)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            _done, pending = await asyncio.wait(
                set(tasks), timeout=self.grace_s + self.target.timeout_s
            )
            for task in pending:
                task.cancel()
            self.unfinished = len(pending)
            if pending:
                await asyncio.wait(pending, timeout=2)
        self.elapsed_s = max(self.duration_s, time.perf_counter() - t0)
        return self

    def totals(self) -> dict[str, Any]:
        errors: Counter[str] = Counter()
        ack, lag = LogHistogram(), LogHistogram()
        for stats in self.windows:
            errors.update(stats.errors)
            ack.update(stats.ack)
            lag.update(stats.dispatch_lag)
        acked = sum(s.acked for s in self.windows)
        return {
            "due": sum(s.due for s in self.windows),
            "sent": sum(s.sent for s in self.windows),
            "acked": acked,
            "errors": dict(errors),
            "unfinished": self.unfinished,
            "elapsed_s": round(self.elapsed_s, 2),
            "events_per_s": round(acked / self.elapsed_s, 1) if self.elapsed_s else 0.0,
            "ack_latency_ms": ack.summary_ms(),
            "dispatch_lag_ms": lag.summary_ms(),
            "peak_in_flight": self.peak_in_flight,
            "max_in_flight": self.max_in_flight,
        }
