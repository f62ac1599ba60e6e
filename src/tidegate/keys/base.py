"""The KeyRing Protocol: wraps and unwraps per-tenant data keys with a master key."""

from __future__ import annotations

from typing import Protocol


class KeyRing(Protocol):
    """Holds the master key (a local file, or AWS KMS); never exposes it.

    `context` binds a wrapped key to its owner (the tenant id): unwrapping with
    another context fails, so a wrapped key copied to another tenant is useless.
    """

    @property
    def key_id(self) -> str:
        """Identifies the master key that `wrap` uses now."""
        ...

    async def wrap(self, data_key: bytes, context: str) -> bytes:
        """Encrypt `data_key` under the master key. Raise BackendUnavailable if unreachable."""
        ...

    async def unwrap(self, wrapped: bytes, context: str) -> bytes:
        """Return the data key; raise DecryptionFailed if `wrapped` or `context` is wrong."""
        ...

    async def aclose(self) -> None: ...
