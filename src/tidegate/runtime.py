"""Runtime: the engines and shared services one process opens from its Settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from tidegate.eventlog import EventLog, open_event_log
from tidegate.keys import KeyRing, open_key_ring
from tidegate.metering import UsageMeter
from tidegate.security.envelope import Envelope
from tidegate.security.ssrf import SsrfPolicy
from tidegate.settings import Settings
from tidegate.store import Store, open_store

EVENTS_TOPIC = "events"


@dataclass
class Runtime:
    settings: Settings
    log: EventLog
    store: Store
    key_ring: KeyRing
    envelope: Envelope
    meter: UsageMeter
    ssrf: SsrfPolicy
    closed: bool = field(default=False)

    @cached_property
    def topic(self) -> str:
        """Topics are per region: a cell never shares its log with another."""
        return f"{EVENTS_TOPIC}.{self.settings.region}"

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        await self.meter.flush()
        await self.log.aclose()
        await self.store.aclose()
        await self.key_ring.aclose()


def open_runtime(settings: Settings) -> Runtime:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = open_store(settings.resolved_store_url)
    key_ring = open_key_ring(settings.kms_url or settings.resolved_key_file)
    return Runtime(
        settings=settings,
        log=open_event_log(
            settings.resolved_log_url,
            partition=settings.process_index,
            processes=settings.processes,
        ),
        store=store,
        key_ring=key_ring,
        envelope=Envelope(key_ring, store.tenants),
        meter=UsageMeter(store),
        ssrf=SsrfPolicy(settings.ssrf_allow_cidrs, allow_http=not settings.https_only),
    )
