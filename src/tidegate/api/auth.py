"""Read-API credentials: tenant-scoped API keys (`Authorization: Bearer tgk_...`).

This is the interim machine credential until the identity issue brings OAuth 2.0;
the tenant always comes from the credential, never from the request body or path.
"""

from __future__ import annotations

import time

from starlette.requests import Request

from tidegate.admin import check_region
from tidegate.errors import Unauthorized
from tidegate.ids import credential_hash, credential_region
from tidegate.model import Tenant, TenantId
from tidegate.runtime import Runtime

_TTL_S = 10.0


class ApiKeys:
    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime
        self._cache: dict[str, tuple[float, Tenant]] = {}

    async def tenant(self, request: Request) -> Tenant:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("send an API key as 'Authorization: Bearer tgk_...'")
        minted_in = credential_region(token.strip())
        if minted_in is not None:
            check_region(self._rt.settings, minted_in)
        digest = credential_hash(token.strip())
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        tenant_id: TenantId | None = await self._rt.store.tenants.tenant_by_api_key(digest)
        tenant = await self._rt.store.tenants.get_tenant(tenant_id) if tenant_id else None
        if tenant is None:
            raise Unauthorized("unknown or revoked API key")
        check_region(self._rt.settings, tenant.region)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (time.monotonic() + _TTL_S, tenant)
        return tenant
