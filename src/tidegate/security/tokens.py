"""OAuth 2.0 resource server: validate JWT access tokens (RFC 9068) against trusted issuers.

Each trusted issuer is configured by URL; its keys come from OIDC discovery and its
JWKS, cached here. An unknown `kid` triggers one re-fetch (at most every
`REFRESH_MIN_S` per issuer), which is how a key rotation is picked up; when the
provider is down the last good key set stays in use. Nothing is ever fetched from a
token: `jku`, `x5u` and `jwk` headers are ignored. The signature algorithm must be
on the allow-list (RS256, ES256, EdDSA) and match the key's type, so neither
`alg: none` nor HS256-signed-with-the-public-key can pass.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
import jwt
import msgspec
import structlog

from tidegate.errors import Unauthorized

log = structlog.get_logger(__name__)

ALLOWED_ALGORITHMS = ("RS256", "ES256", "EdDSA")
_KEY_TYPES = {"RS256": "RSA", "ES256": "EC", "EdDSA": "OKP"}
REFRESH_MIN_S = 5.0
MAX_AGE_S = 600.0
LEEWAY_S = 30
MAX_TOKEN_BYTES = 8192


class IssuerConfig(msgspec.Struct, frozen=True, kw_only=True):
    """One trusted identity provider (TIDEGATE_OIDC_ISSUERS is a JSON list of these)."""

    issuer: str
    audience: str
    tenant_claim: str = "tenant_id"
    require_typ: bool = True
    mfa_acr: str | None = None  # an `acr` value that counts as MFA, besides amr=mfa
    jwks_uri: str | None = None  # skip discovery (providers without it)


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """Who is calling, from a validated token (or an API key)."""

    subject: str
    client_id: str | None
    tenant_id: str | None
    scopes: frozenset[str]
    has_mfa: bool
    issuer: str


class _KeySet:
    def __init__(self, config: IssuerConfig) -> None:
        self.config = config
        self.keys: dict[str, jwt.PyJWK] = {}
        self.fetched_at = 0.0
        self.attempted_at = 0.0
        self.lock = asyncio.Lock()


class TokenValidator:
    """Validates access tokens; one per process (it owns an HTTP session and key caches)."""

    def __init__(self, issuers: Sequence[IssuerConfig], *, timeout_s: float = 5.0) -> None:
        self._issuers = {i.issuer: _KeySet(i) for i in issuers}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def trust_static(self, config: IssuerConfig, jwks: Sequence[dict[str, Any]]) -> None:
        """Trust an issuer whose public keys are given here and never fetched (dev issuer)."""
        keyset = _KeySet(config)
        keyset.keys = {str(k.get("kid", "")): jwt.PyJWK(k) for k in jwks}
        keyset.fetched_at = keyset.attempted_at = float("inf")
        self._issuers[config.issuer] = keyset

    @property
    def enabled(self) -> bool:
        return bool(self._issuers)

    async def validate(self, token: str) -> Principal:
        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthorized("access token is too large")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"malformed access token: {exc}") from exc
        alg = header.get("alg")
        if alg not in ALLOWED_ALGORITHMS:
            raise Unauthorized(
                f"token algorithm {alg!r} is not accepted ({', '.join(ALLOWED_ALGORITHMS)})"
            )
        issuer = unverified.get("iss")
        keyset = self._issuers.get(issuer) if isinstance(issuer, str) else None
        if keyset is None:
            raise Unauthorized("token issuer is not trusted")
        config = keyset.config
        typ = str(header.get("typ", "")).lower()
        if config.require_typ and typ not in ("at+jwt", "application/at+jwt"):
            raise Unauthorized("token is not an access token (typ must be at+jwt)")
        kid = header.get("kid")
        key = await self._key(keyset, kid if isinstance(kid, str) else None)
        if key.key_type != _KEY_TYPES[alg] or (key.algorithm_name not in (alg, None)):
            raise Unauthorized("token algorithm does not match its key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key.key,
                algorithms=[alg],
                audience=config.audience,
                issuer=config.issuer,
                leeway=LEEWAY_S,
                options={"require": ["exp", "iat", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("access token has expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise Unauthorized("access token is not valid yet") from exc
        except jwt.InvalidAudienceError as exc:
            raise Unauthorized("access token is for another audience") from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid access token: {exc}") from exc
        return _principal(claims, config)

    async def _key(self, keyset: _KeySet, kid: str | None) -> jwt.PyJWK:
        if keyset.fetched_at != float("inf") and time.monotonic() - keyset.fetched_at > MAX_AGE_S:
            await self._refresh(keyset, force=False)
        found = _pick(keyset.keys, kid)
        if found is None:
            await self._refresh(keyset, force=True)
            found = _pick(keyset.keys, kid)
        if found is None:
            raise Unauthorized("token signing key is unknown to its issuer")
        return found

    async def _refresh(self, keyset: _KeySet, *, force: bool) -> None:
        if keyset.fetched_at == float("inf"):
            return  # static keys
        async with keyset.lock:
            now = time.monotonic()
            if now - keyset.attempted_at < REFRESH_MIN_S and (force or keyset.keys):
                return  # rate limit: at most one fetch per issuer per REFRESH_MIN_S
            keyset.attempted_at = now
            try:
                keyset.keys = await self._fetch(keyset.config)
                keyset.fetched_at = now
            except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
                log.warning(
                    "oidc.jwks_unavailable", issuer=keyset.config.issuer, error=str(exc)[:200]
                )  # keep the last good key set

    async def _fetch(self, config: IssuerConfig) -> dict[str, jwt.PyJWK]:
        session = self._session or aiohttp.ClientSession(timeout=self._timeout)
        self._session = session
        jwks_uri = config.jwks_uri
        if jwks_uri is None:
            discovery = config.issuer.rstrip("/") + "/.well-known/openid-configuration"
            async with session.get(discovery) as response:
                response.raise_for_status()
                document = json.loads(await response.read())
            if document.get("issuer") != config.issuer:
                raise ValueError("discovery document names another issuer")
            jwks_uri = str(document["jwks_uri"])
        async with session.get(jwks_uri) as response:
            response.raise_for_status()
            jwks = json.loads(await response.read())
        keys: dict[str, jwt.PyJWK] = {}
        for data in jwks.get("keys", []):
            if data.get("use", "sig") != "sig" or "d" in data:
                continue
            try:
                key = jwt.PyJWK(data)
            except jwt.PyJWTError:
                continue
            keys[str(data.get("kid", ""))] = key
        return keys

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def _pick(keys: dict[str, jwt.PyJWK], kid: str | None) -> jwt.PyJWK | None:
    if kid is not None:
        return keys.get(kid)
    return next(iter(keys.values())) if len(keys) == 1 else None


def _principal(claims: dict[str, Any], config: IssuerConfig) -> Principal:
    raw_scope = claims.get("scope")
    scopes: set[str] = set()
    if isinstance(raw_scope, str):
        scopes.update(raw_scope.split())
    scp = claims.get("scp")
    if isinstance(scp, list):
        scopes.update(str(s) for s in scp)
    elif isinstance(scp, str):
        scopes.update(scp.split())
    amr = claims.get("amr")
    has_mfa = (isinstance(amr, list) and "mfa" in amr) or (
        config.mfa_acr is not None and claims.get("acr") == config.mfa_acr
    )
    tenant = claims.get(config.tenant_claim)
    client_id = claims.get("client_id") or claims.get("azp")
    return Principal(
        subject=str(claims.get("sub") or client_id or ""),
        client_id=str(client_id) if client_id else None,
        tenant_id=str(tenant) if isinstance(tenant, str) and tenant else None,
        scopes=frozenset(scopes),
        has_mfa=has_mfa,
        issuer=config.issuer,
    )
