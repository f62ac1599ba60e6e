"""Webhook delivery over a pooled aiohttp client, signed per Standard Webhooks.

Redirects are not followed (a 3xx is a failure). Every request's host is checked by
the SSRF policy: IP literals before the request, names at connect time by the
GuardedResolver, so the connection only ever goes to a checked address.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import aiohttp

from tidegate.destinations.base import Outcome
from tidegate.errors import UnsafeUrl
from tidegate.model import Destination
from tidegate.pipeline.retry import parse_retry_after
from tidegate.security import signing
from tidegate.security.resolver import GuardedResolver
from tidegate.security.ssrf import SsrfPolicy, blocked_reason

USER_AGENT = "Tidegate-Webhooks/0.1"


class WebhookSender:
    def __init__(self, policy: SsrfPolicy, *, default_timeout_s: float, limit: int = 1024) -> None:
        self._policy = policy
        self._default_timeout_s = default_timeout_s
        connector = aiohttp.TCPConnector(
            limit=limit, limit_per_host=0, resolver=GuardedResolver(policy), ttl_dns_cache=None
        )
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers={"user-agent": USER_AGENT},
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def send(
        self,
        destination: Destination,
        *,
        secrets: list[str],
        webhook_id: str,
        body: bytes,
        content_type: str,
    ) -> Outcome:
        started = time.perf_counter()
        try:
            self._policy.check_url(destination.url)
        except UnsafeUrl as exc:
            return Outcome(error=exc.detail, blocked=True)
        headers = signing.headers(secrets, webhook_id, int(time.time()), body)
        headers["content-type"] = content_type
        timeout_s = destination.timeout_s or self._default_timeout_s
        timeout = self._timeouts.get(timeout_s)
        if timeout is None:
            timeout = self._timeouts[timeout_s] = aiohttp.ClientTimeout(total=timeout_s)
        try:
            async with self._session.post(
                destination.url,
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=timeout,
            ) as response:
                await response.content.readany()  # a taste of the body frees the connection
                header = response.headers.get("retry-after")
                retry_after = (
                    None if header is None else parse_retry_after(header, now=datetime.now(UTC))
                )
                return Outcome(
                    status_code=response.status,
                    retry_after_s=retry_after,
                    duration_ms=(time.perf_counter() - started) * 1000,
                    error=None if 200 <= response.status < 300 else f"HTTP {response.status}",
                )
        except TimeoutError:
            return Outcome(error=f"timed out after {timeout_s:g}s", duration_ms=_ms(started))
        except (aiohttp.ClientError, OSError, UnsafeUrl) as exc:
            reason = blocked_reason(exc)
            if reason is not None:
                return Outcome(error=reason, blocked=True, duration_ms=_ms(started))
            return Outcome(error=_describe(exc), duration_ms=_ms(started))

    async def aclose(self) -> None:
        await self._session.close()
        await asyncio.sleep(0)


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]
