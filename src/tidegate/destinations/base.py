"""What a destination engine does: send one prepared delivery and say what happened."""

from __future__ import annotations

from typing import Protocol

import msgspec

from tidegate.model import Destination


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """The result of one attempt, before the retry rules interpret it."""

    status_code: int | None = None
    error: str | None = None
    blocked: bool = False  # refused by the SSRF policy: no connection was made
    retry_after_s: float | None = None
    duration_ms: float = 0.0

    @property
    def is_success(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class Sender(Protocol):
    async def send(
        self,
        destination: Destination,
        *,
        secrets: list[str],
        webhook_id: str,
        body: bytes,
        content_type: str,
    ) -> Outcome:
        """Make one attempt; never raise for the receiver's behaviour (that is the Outcome)."""
        ...

    async def aclose(self) -> None: ...
