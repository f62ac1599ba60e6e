"""Who is calling, and may they: bearer credentials, scopes, tenant and region checks.

Two bearer credentials are accepted:
- JWT access tokens from a trusted identity provider (or the development issuer),
  validated by `security.tokens.TokenValidator`; the tenant comes from a claim.
- API keys (`tgk_<region>_...`): a machine credential bound to one tenant, holding every
  tenant scope (never `tidegate:admin`). Stored hashed; revocable.

Every endpoint declares the one scope it needs (`require(scope)`). The tenant always
comes from the credential, never from the request body or path.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import msgspec
from starlette.requests import Request

from tidegate.admin import check_region
from tidegate.errors import Forbidden, Unauthorized
from tidegate.ids import credential_hash, credential_region
from tidegate.model import Tenant, TenantId
from tidegate.runtime import Runtime
from tidegate.security.tokens import Principal, TokenValidator

SCOPES: dict[str, str] = {
    "events:write": "send events (ingest)",
    "events:read": "read event metadata, deliveries and attempts",
    "payload:read": "read decrypted event payloads",
    "destinations:read": "read destinations",
    "destinations:write": "create, change and delete destinations; rotate their secrets",
    "sources:write": "create sources; rotate and revoke write keys",
    "replay:execute": "replay events and dead letters",
    "transfers:write": "record and withdraw consent to load events into another region",
    "audit:read": "read the audit log",
    "usage:read": "read usage meters",
    "tidegate:admin": "operator actions across tenants (needs MFA evidence in the token)",
}
ADMIN_SCOPE = "tidegate:admin"
TENANT_SCOPES = frozenset(s for s in SCOPES if s != ADMIN_SCOPE)
_API_KEY_TTL_S = 10.0


class Caller(msgspec.Struct, frozen=True, kw_only=True):
    """An authenticated, authorised caller of a tenant-scoped endpoint."""

    principal: Principal
    tenant: Tenant
    request_id: str | None = None
    source_ip: str | None = None


class Authenticator:
    def __init__(self, runtime: Runtime, validator: TokenValidator) -> None:
        self._rt = runtime
        self._validator = validator
        self._api_keys: dict[str, tuple[float, Principal]] = {}

    async def principal(self, request: Request) -> Principal:
        return await self.principal_from_header(request.headers.get("authorization", ""))

    async def principal_from_header(self, authorization: str) -> Principal:
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("send 'Authorization: Bearer <access token or API key>'")
        if token.startswith("tgk_"):
            return await self._api_key(token)
        if not self._validator.enabled:
            raise Unauthorized("no identity provider is configured; use an API key")
        return await self._validator.validate(token)

    async def _api_key(self, token: str) -> Principal:
        minted_in = credential_region(token)
        if minted_in is not None:
            check_region(self._rt.settings, minted_in)
        digest = credential_hash(token)
        cached = self._api_keys.get(digest)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        tenant_id = await self._rt.store.tenants.tenant_by_api_key(digest)
        if tenant_id is None:
            raise Unauthorized("unknown or revoked API key")
        principal = Principal(
            subject=f"apikey:{digest[:12]}",
            client_id=None,
            tenant_id=tenant_id,
            scopes=TENANT_SCOPES,
            has_mfa=False,
            issuer="tidegate:api-key",
        )
        if len(self._api_keys) > 10_000:
            self._api_keys.clear()
        self._api_keys[digest] = (time.monotonic() + _API_KEY_TTL_S, principal)
        return principal

    def require(self, scope: str) -> Callable[[Request], Awaitable[Caller]]:
        """A dependency: the caller, if its credential holds `scope` for its own tenant."""
        if scope not in SCOPES:
            raise ValueError(f"unknown scope {scope!r}")

        async def dependency(request: Request) -> Caller:
            principal = await self.principal(request)
            request.scope["tidegate.principal"] = principal
            if scope not in principal.scopes:
                raise Forbidden(f"this credential lacks the {scope!r} scope", scope=scope)
            if principal.tenant_id is None:
                raise Forbidden("this credential names no tenant")
            tenant = await self._rt.store.tenants.get_tenant(TenantId(principal.tenant_id))
            if tenant is None:
                raise Forbidden("the credential's tenant does not exist in this cell")
            check_region(self._rt.settings, tenant.region)
            request.scope["tidegate.principal"] = principal
            return Caller(
                principal=principal,
                tenant=tenant,
                request_id=request.scope.get("tidegate.request_id"),
                source_ip=request.client.host if request.client else None,
            )

        dependency.__name__ = f"require_{scope.replace(':', '_')}"
        return dependency

    def require_operator(self) -> Callable[[Request], Awaitable[Principal]]:
        """Operator endpoints: `tidegate:admin` and MFA evidence (amr=mfa, or the acr)."""

        async def dependency(request: Request) -> Principal:
            principal = await self.principal(request)
            request.scope["tidegate.principal"] = principal
            if ADMIN_SCOPE not in principal.scopes:
                raise Forbidden(f"operator endpoint: needs the {ADMIN_SCOPE!r} scope")
            if not principal.has_mfa:
                raise Forbidden(
                    "operator endpoint: the token carries no MFA evidence (amr must contain"
                    " 'mfa', or acr must be the configured MFA level); sign in with MFA"
                )
            request.scope["tidegate.principal"] = principal
            return principal

        dependency.__name__ = "require_operator"
        return dependency
