"""The SSRF policy at connect time: an aiohttp resolver that checks every address.

Kept apart from `ssrf.py` so the policy (checked by the CLI and the api when a
destination is created) does not import aiohttp; only the deliverers need this.
"""

from __future__ import annotations

import asyncio
import socket
from ipaddress import ip_address

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from tidegate.security.ssrf import SsrfPolicy


class GuardedResolver(AbstractResolver):
    """aiohttp resolver that refuses hosts resolving to any blocked address.

    Use as `TCPConnector(resolver=GuardedResolver(policy))`. A refusal raises
    `UnsafeUrl` before any connection is made; aiohttp lets it propagate unchanged out
    of `session.request()`. DNS failures stay `OSError`, which aiohttp turns into
    `ClientConnectorDNSError`.
    """

    def __init__(self, policy: SsrfPolicy) -> None:
        self._policy = policy

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Resolve like aiohttp's ThreadedResolver, then check every address."""
        results = await ThreadedResolver(asyncio.get_running_loop()).resolve(host, port, family)
        for result in results:
            self._policy.check_ip(ip_address(result["host"]))
        return results

    async def close(self) -> None:
        """Nothing to release."""
