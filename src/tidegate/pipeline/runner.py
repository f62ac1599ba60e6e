"""The worker role: router, dispatcher and retry scheduler in one process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from functools import partial

import structlog

from tidegate.destinations.webhook import WebhookSender
from tidegate.ids import now_ms
from tidegate.pipeline.deliver import Dispatcher
from tidegate.pipeline.router import Router, lease_ms
from tidegate.runtime import Runtime

log = structlog.get_logger(__name__)
_SCAN_S = 1.0
_CLAIM_LIMIT = 500
_PURGE_PAUSE_S = 0.01
_TRIM_INTERVAL_S = 2.0


class Worker:
    """Runs until `stop()`; then drains in-flight attempts and leaves the rest leased to no one."""

    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime
        self._sender = WebhookSender(
            runtime.ssrf,
            default_timeout_s=runtime.settings.delivery_timeout_s,
            limit=runtime.settings.delivery_concurrency,
        )
        self._kick = asyncio.Event()
        self.dispatcher = Dispatcher(runtime, self._sender, on_recovered=self._kick.set)
        self._router = Router(runtime, self.dispatcher)
        self._tasks: list[asyncio.Task[None]] = []
        # A claim brings at most a quarter of a lane's backlog cap: one into a lane at the
        # most the scheduler claims for (half) cannot overflow it.
        self._claim_limit = min(_CLAIM_LIMIT, max(1, runtime.settings.lane_backlog // 4))

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._recover()),
            asyncio.create_task(guarded("router", self._router.run)),
            asyncio.create_task(guarded("scheduler", self._schedule)),
            asyncio.create_task(guarded("housekeeping", self._housekeep)),
            asyncio.create_task(guarded("trim", partial(trim_log, self._rt))),
        ]

    async def _recover(self) -> None:
        """A sole worker takes back what a crashed predecessor had in flight, at once."""
        if self._rt.store.exclusive_worker:
            released = await self._rt.store.deliveries.release_all_leases()
            if released:
                log.info("worker.recovered_leases", deliveries=released)
                self._kick.set()

    def wake(self) -> None:
        """Look for due deliveries now (after a replay, or a breaker closing)."""
        self._kick.set()

    async def _schedule(self) -> None:
        """Claim due deliveries (retries, replays, leases lapsed after a crash)."""
        deliveries = self._rt.store.deliveries
        while True:
            now = now_ms()
            full = self.dispatcher.full_destinations()
            marks = self.dispatcher.spill_marks()
            due = await deliveries.claim_due(
                now_ms=now,
                lease_ms=lease_ms(self._rt.settings.delivery_timeout_s),
                limit=self._claim_limit,
                exclude=full,
            )
            fresh = [d for d in due if not self.dispatcher.is_known(d.id)]
            if fresh:
                bodies = await self.dispatcher.load_bodies(fresh)
                self.dispatcher.submit(fresh, bodies, claimed=True)
            if len(due) == self._claim_limit:
                continue
            self.dispatcher.claimed_all(marks, exclude=full)
            next_due = await deliveries.next_due_ms(full)
            wait_s = (
                _SCAN_S
                if next_due is None
                else min(_SCAN_S, max(0.0, (next_due - now_ms()) / 1000))
            )
            self._kick.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), timeout=max(wait_s, 0.01))

    async def _housekeep(self) -> None:
        """Purge expired store rows: dedupe claims, events past retention, audit records."""
        settings = self._rt.settings
        while True:
            await asyncio.sleep(settings.housekeeping_interval_s)
            now = now_ms()
            purged = 0
            events_before_ms = now - int(settings.event_retention_days * 86_400_000)
            while dropped := await self._rt.store.events.purge(
                now_ms=now, events_before_ms=events_before_ms
            ):
                purged += dropped
                await asyncio.sleep(_PURGE_PAUSE_S)  # writes queued meanwhile go first
            audit_purged = await self._rt.store.audit.purge_audit(
                now - int(settings.audit_retention_days * 86_400_000)
            )
            if purged or audit_purged:
                log.info(
                    "housekeeping.done",
                    events_and_claims_purged=purged,
                    audit_records_purged=audit_purged,
                )

    async def stop(self, *, drain_timeout_s: float = 10.0) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.dispatcher.drain(drain_timeout_s)
        await self._sender.aclose()


async def guarded(name: str, loop: Callable[[], Awaitable[None]]) -> None:
    """Run `loop`; when it crashes, log it and start it again a second later."""
    while True:
        try:
            await loop()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("worker.loop_crashed", loop=name)
            await asyncio.sleep(1)


async def trim_log(runtime: Runtime) -> None:
    """Trim the log behind every consumer group, a little at a time: every few seconds,
    so no trim is large enough to hold appends up (a minute's worth at once did). Runs
    in the worker, and in each extra api process of `serve --processes` for the log
    partition it appends to."""
    interval_s = min(_TRIM_INTERVAL_S, runtime.settings.housekeeping_interval_s)
    while True:
        await asyncio.sleep(interval_s)
        trimmed = await runtime.log.trim(runtime.topic)
        if trimmed:
            log.debug("log.trimmed", records=trimmed)
