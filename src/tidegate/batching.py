"""GroupWriter: many concurrent callers, one store write per batch.

Items that arrive while a write is in flight join the next write, the way group
commit works in a database: a busy process makes one write per batch, an idle one
writes at once (or after `linger_s`, when a write is worth delaying to share it).
`submit` returns when its item is durable, or raises what the write raised.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class GroupWriter(Generic[T]):
    def __init__(
        self, write: Callable[[Sequence[T]], Awaitable[object]], *, linger_s: float = 0.0
    ) -> None:
        self._write_batch = write
        self._linger_s = linger_s
        self._pending: list[tuple[T, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self.waiting = 0  # items submitted and not yet written (or failed)

    async def submit(self, item: T) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((item, done))
        if self._writer is None:
            self._writer = asyncio.create_task(self._drain())
        self.waiting += 1
        try:
            await done
        finally:
            self.waiting -= 1

    async def _drain(self) -> None:
        try:
            if self._linger_s:
                await asyncio.sleep(self._linger_s)
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    await self._write_batch([item for item, _ in batch])
                except Exception as exc:  # noqa: BLE001 - every waiter gets the failure
                    for _, done in batch:
                        if not done.done():
                            done.set_exception(exc)
                else:
                    for _, done in batch:
                        if not done.done():
                            done.set_result(None)
        finally:
            self._writer = None
