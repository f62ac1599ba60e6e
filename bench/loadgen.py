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

The loops send through `rawhttp.Client` (keep-alive HTTP/1.1 on raw asyncio, httptools
for the responses) and are driven by its callbacks: no Task per request. A closed-loop
sender sends its next request from the callback of the previous one; an open loop wakes
up at the intended send time of the next request due (a timerfd, bench/alarm.py: uvloop's
own timers count whole milliseconds), sends every request due, and sleeps again, at
least MIN_GAP_S. A request due while every connection is busy waits for the first one
free, timed from its intended time all along. aiohttp (`session`) is left for the few
control calls.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import aiohttp
import rawhttp
from alarm import Alarm
from stats import Bitmap, LogHistogram

OK_BODY = b'{"success":true}'
# (request index, intended send time (perf_counter)): send request i
Dispatch = Callable[[int, float], None]
# The open loops wake up at most this often: a wake-up costs ~20 µs of CPU on the small
# machines the benchmark runs on, as much as sending and receiving a request, so above
# 1 / MIN_GAP_S requests/s the requests due within one gap go out together, each at most
# this late (its dispatch lag, part of its latency as any lateness is).
MIN_GAP_S = 0.0005


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
    """An aiohttp session, for the benchmark's few control calls (polling the receiver,
    the read API, /metrics); the measured loads go through `client`."""
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=0, force_close=False)
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=("User-Agent",),
    )


def client(connections: int) -> rawhttp.Client:
    """The client the loops below send with: at most `connections` keep-alive connections
    per origin, a few µs of CPU per request (see bench/rawhttp.py)."""
    return rawhttp.Client(connections)


def _outcome(target: Target, error: str | None, status: int, body: bytes) -> str | None:
    """None if the answer is what `target.ok` expects, else a short error label."""
    if error is not None:
        return error
    return None if target.ok(status, body) else f"HTTP {status}"


async def _run_schedule(count: int, rate: float, t0: float, dispatch: Dispatch) -> None:
    """Call `dispatch(i, intended)` for i in range(count), each once its intended time
    t0 + i/rate has come: at each wake-up every request due, then sleep until the next
    is (at least MIN_GAP_S after this wake-up). Callbacks, no Task per wake-up."""
    finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    i = 0

    def tick() -> None:
        nonlocal i
        try:
            intended = t0 + i / rate
            now = time.perf_counter()
            while intended <= now:
                dispatch(i, intended)
                i += 1
                if i == count:
                    finished.set_result(None)
                    return
                intended = t0 + i / rate
                now = time.perf_counter()
            alarm.call_at(max(intended, now + MIN_GAP_S), tick)
        except Exception as exc:  # noqa: BLE001 - raised by the awaiting coroutine
            finished.set_exception(exc)

    if count <= 0:
        return
    with Alarm() as alarm:
        tick()
        await finished


class _Sender:
    """One closed-loop sender: its next request goes out when the previous one answers."""

    def __init__(self, loop: _ClosedLoop) -> None:
        self.loop = loop
        self.messages = 0
        self.sent = 0.0
        self.on_done = self._done

    def next(self) -> None:
        loop = self.loop
        i = next(loop.counter)
        if i >= loop.max_requests or time.perf_counter() >= loop.deadline:
            loop.sender_stopped()
            return
        try:
            request = loop.target.make(i)
        except Exception as exc:  # noqa: BLE001 - raised by closed_loop, not lost in a callback
            loop.fail(exc)
            return
        self.messages = len(request.message_ids)
        loop.result.requests_sent += 1
        loop.result.events_sent += self.messages
        self.sent = time.perf_counter()
        loop.http.send(loop.prepared, request.body, loop.target.timeout_s, self.on_done)

    def _done(self, error: str | None, status: int, body: bytes) -> None:
        done = time.perf_counter()
        result = self.loop.result
        error = _outcome(self.loop.target, error, status, body)
        if error is None:
            result.requests_ok += 1
            result.events_acked += self.messages
            result.latencies_s.append(done - self.sent)
        else:
            result.errors[error] += 1
        self.next()


class _ClosedLoop:
    """What the senders of one closed loop share; `finished` is done once all stopped."""

    def __init__(
        self,
        http: rawhttp.Client,
        target: Target,
        result: Result,
        deadline: float,
        max_requests: int,
        senders: int,
    ) -> None:
        self.http, self.target, self.result = http, target, result
        self.prepared = http.prepare(target.method, target.url, target.headers)
        self.deadline, self.max_requests = deadline, max_requests
        self.counter = itertools.count()
        self.running = senders
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def sender_stopped(self) -> None:
        self.running -= 1
        if self.running == 0 and not self.finished.done():
            self.finished.set_result(None)

    def fail(self, exc: Exception) -> None:
        self.deadline = 0.0  # the other senders stop after their request in flight
        if not self.finished.done():
            self.finished.set_exception(exc)


async def closed_loop(
    http: rawhttp.Client,
    target: Target,
    *,
    name: str,
    concurrency: int,
    duration_s: float,
    max_requests: int = 5_000_000,
) -> Result:
    result = Result(name, "closed", f"{concurrency} concurrent senders, {duration_s:g} s")
    start = time.perf_counter()
    result.started_wall = time.time()
    loop = _ClosedLoop(http, target, result, start + duration_s, max_requests, concurrency)
    for _ in range(concurrency):
        _Sender(loop).next()
    # each sender stops at the deadline after its request in flight answers (<= timeout)
    await loop.finished
    result.elapsed_s = time.perf_counter() - start
    result.ended_wall = time.time()
    return result


async def open_loop(
    http: rawhttp.Client,
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
    prepared = http.prepare(target.method, target.url, target.headers)
    outstanding: dict[int, Request] = {}
    drained: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    scheduled = False
    t0 = time.perf_counter()
    wall0 = time.time()
    result.started_wall = wall0

    def done(
        i: int, intended: float, request: Request, error: str | None, status: int, body: bytes
    ) -> None:
        now = time.perf_counter()
        if outstanding.pop(i, None) is None:
            return  # given up on at the end of the grace period: counted as unfinished
        error = _outcome(target, error, status, body)
        if error is None:
            result.requests_ok += 1
            result.events_acked += len(request.message_ids)
            result.latencies_s.append(now - intended)
            if keep_ids:
                intended_wall = wall0 + (intended - t0)
                for mid in request.message_ids:
                    result.acked_intended_wall[mid] = intended_wall
        else:
            result.errors[error] += 1
            if keep_ids:
                result.unacked_ids.update(request.message_ids)
        if scheduled and not outstanding and not drained.done():
            drained.set_result(None)

    def dispatch(i: int, intended: float) -> None:
        result.dispatch_lag_s.append(time.perf_counter() - intended)
        request = target.make(i)
        result.requests_sent += 1
        result.events_sent += len(request.message_ids)
        outstanding[i] = request
        http.send(prepared, request.body, target.timeout_s, partial(done, i, intended, request))

    await _run_schedule(count, rate, t0, dispatch)
    scheduled = True
    if outstanding:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(drained, timeout=grace_s + target.timeout_s)
    result.unfinished = len(outstanding)
    if keep_ids:
        for request in outstanding.values():
            result.unacked_ids.update(request.message_ids)
    outstanding.clear()
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
        http: rawhttp.Client,
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
        self.make_timed = target.make_timed
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
        self._t0 = 0.0
        self._prepared = http.prepare(target.method, target.url, target.headers)
        self._scheduled = False
        self._given_up = False
        self._drained: asyncio.Future[None] | None = None

    def _window(self, i: int) -> int:
        return min(int(i / self.rate / self.window_s), len(self.windows) - 1)

    def _dispatch(self, i: int, intended: float) -> None:
        self.dispatched = i + 1
        w = self._window(i)
        stats = self.windows[w]
        stats.due += 1
        if self.in_flight >= self.max_in_flight:
            stats.errors[SHED] += 1
            return
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        stats.dispatch_lag.record(max(0.0, time.perf_counter() - intended))
        request = self.make_timed(i, self.started_wall + (intended - self._t0), w)
        stats.sent += 1
        self.http.send(
            self._prepared, request.body, self.target.timeout_s, partial(self._done, i, intended)
        )

    def _done(self, i: int, intended: float, error: str | None, status: int, body: bytes) -> None:
        now = time.perf_counter()
        if self._given_up:
            return  # counted as unfinished
        self.in_flight -= 1
        stats = self.windows[self._window(i)]
        error = _outcome(self.target, error, status, body)
        if error is None:
            stats.acked += 1
            stats.ack.record(now - intended)
            self.acked.set(i)
        else:
            stats.errors[error] += 1
        drained = self._drained
        if self._scheduled and not self.in_flight and drained is not None and not drained.done():
            drained.set_result(None)

    async def run(self) -> WindowedOpenLoop:
        self._drained = asyncio.get_running_loop().create_future()
        self._t0 = t0 = time.perf_counter()
        self.started_wall = time.time()
        await _run_schedule(self.count, self.rate, t0, self._dispatch)
        self._scheduled = True
        if self.in_flight:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained, timeout=self.grace_s + self.target.timeout_s)
        self.unfinished = self.in_flight
        self._given_up = True
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
