"""The test OIDC provider issues real, verifiable RFC 9068 JWT access tokens."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
import requests

from tests.idp.provider import (
    DEFAULT_AUDIENCE,
    OidcProvider,
    OidcProviderError,
    TokenRequestError,
    make_jwk,
    make_jwks,
    public_jwk,
)

CLIENTS: list[dict[str, Any]] = [
    {
        "client_id": "tenant-a",
        "client_secret": "secret-a",
        "tenant_id": "ten_a",
        "scopes": "events:read payload:read",
        "amr": ["pwd", "mfa"],
    },
    {
        "client_id": "tenant-b",
        "client_secret": "secret-b",
        "tenant_id": "ten_b",
        "scopes": "events:write tidegate:admin",
    },
    {"client_id": "tenant-c", "client_secret": "secret-c", "tenant_id": "ten_c"},
]


@pytest.fixture(scope="module")
def idp() -> Iterator[OidcProvider]:
    provider = OidcProvider()
    provider.start(CLIENTS, make_jwks(make_jwk("key-1")))
    yield provider
    assert provider.stop() == 0, "the provider must exit 0 on SIGTERM"


def verify(idp: OidcProvider, token: str, alg: str = "RS256") -> dict[str, Any]:
    """Verify as a resource server does: discovery -> jwks_uri -> key by kid."""
    key = jwt.PyJWKClient(idp.jwks_uri, cache_keys=False).get_signing_key_from_jwt(token)
    return jwt.decode(token, key.key, algorithms=[alg], audience=idp.audience, issuer=idp.issuer)


def test_discovery_names_the_jwks_and_token_endpoints(idp: OidcProvider) -> None:
    doc = requests.get(f"{idp.issuer}/.well-known/openid-configuration", timeout=5).json()
    assert doc["issuer"] == idp.issuer
    assert idp.issuer.startswith("http://127.0.0.1:")
    assert doc["jwks_uri"] == f"{idp.issuer}/jwks"
    assert doc["token_endpoint"] == f"{idp.issuer}/token"
    assert "client_credentials" in doc["grant_types_supported"]
    assert "client_secret_basic" in doc["token_endpoint_auth_methods_supported"]
    assert {"events:read", "tidegate:admin"} <= set(doc["scopes_supported"])
    published = requests.get(doc["jwks_uri"], timeout=5).json()
    assert published == {"keys": [public_jwk(idp.jwks["keys"][0])]}, "no private parts"
    assert idp.startup_seconds < 10


def test_access_token_is_a_verifiable_at_jwt(idp: OidcProvider) -> None:
    token = idp.token("tenant-a", "events:read")
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "RS256", "typ": "at+jwt", "kid": "key-1"}
    claims = verify(idp, token)
    assert set(claims) == {
        "iss", "aud", "exp", "iat", "jti", "sub", "client_id", "scope", "tenant_id", "amr"
    }  # fmt: skip
    assert claims["iss"] == idp.issuer
    assert claims["aud"] == DEFAULT_AUDIENCE
    assert claims["sub"] == claims["client_id"] == "tenant-a"
    assert claims["scope"] == "events:read"
    assert claims["tenant_id"] == "ten_a"
    assert claims["amr"] == ["pwd", "mfa"]
    assert claims["exp"] - claims["iat"] == idp.token_ttl


def test_amr_is_absent_unless_configured_and_scope_defaults_to_the_clients(
    idp: OidcProvider,
) -> None:
    claims = verify(idp, idp.token("tenant-b"))
    assert "amr" not in claims
    assert claims["tenant_id"] == "ten_b"
    assert claims["scope"] == "events:write tidegate:admin"


def test_no_scope_requested_means_no_scope_claim(idp: OidcProvider) -> None:
    claims = verify(idp, idp.token("tenant-a", ""))
    assert "scope" not in claims


def test_a_scope_the_client_lacks_is_refused(idp: OidcProvider) -> None:
    # oidc-provider refuses the whole request (it does not silently downscope) when a
    # known scope is outside the client's "scopes" ...
    with pytest.raises(TokenRequestError) as refused:
        idp.token("tenant-a", "events:read events:write")
    assert refused.value.status == 400
    assert refused.value.body == {
        "error": "invalid_scope",
        "error_description": "requested scope is not allowed",
        "scope": "events:write",
    }
    # ... but drops a scope nobody defines, and grants a subset of the client's scopes.
    assert verify(idp, idp.token("tenant-a", "events:read bogus:scope"))["scope"] == "events:read"
    assert verify(idp, idp.token("tenant-a", "payload:read"))["scope"] == "payload:read"


def test_a_client_without_scopes_gets_none(idp: OidcProvider) -> None:
    claims = verify(idp, idp.token("tenant-c", "events:read tidegate:admin"))
    assert "scope" not in claims
    assert claims["tenant_id"] == "ten_c"


def test_bad_credentials_and_unknown_audiences_are_refused(idp: OidcProvider) -> None:
    with pytest.raises(TokenRequestError) as bad_secret:
        idp.token("tenant-a", client_secret="wrong")
    assert (bad_secret.value.status, bad_secret.value.error) == (401, "invalid_client")
    with pytest.raises(TokenRequestError) as other_api:
        idp.token("tenant-a", resource="https://elsewhere.test")
    assert (other_api.value.status, other_api.value.error) == (400, "invalid_target")


def test_token_without_resource_parameter_still_targets_the_audience(idp: OidcProvider) -> None:
    r = requests.post(
        idp.token_endpoint,
        data={"grant_type": "client_credentials", "scope": "events:read"},
        auth=("tenant-a", "secret-a"),
        timeout=5,
    )
    assert r.status_code == 200, r.text
    assert verify(idp, r.json()["access_token"])["aud"] == DEFAULT_AUDIENCE


def test_tampered_token_fails_verification(idp: OidcProvider) -> None:
    head, payload, sig = idp.token("tenant-a", "events:read").split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["tenant_id"] = "ten_b"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(jwt.InvalidSignatureError):
        verify(idp, f"{head}.{forged}.{sig}")


def test_key_rotation_keeps_old_tokens_verifiable() -> None:
    old, new = make_jwk("old-key"), make_jwk("new-key")
    with OidcProvider() as idp:
        idp.start(CLIENTS, make_jwks(old), audience="https://rotation.tidegate.test")
        issuer = idp.issuer
        old_token = idp.token("tenant-a", "events:read")
        assert jwt.get_unverified_header(old_token)["kid"] == "old-key"

        idp.restart(jwks=make_jwks(new, old))
        assert idp.issuer == issuer, "same port, so the same issuer"
        new_token = idp.token("tenant-a", "events:read")
        assert jwt.get_unverified_header(new_token)["kid"] == "new-key"
        published = requests.get(idp.jwks_uri, timeout=5).json()
        assert [k["kid"] for k in published["keys"]] == ["new-key", "old-key"]
        assert verify(idp, new_token)["aud"] == "https://rotation.tidegate.test"
        assert verify(idp, old_token)["client_id"] == "tenant-a"

        idp.restart(jwks=make_jwks(new))  # the old key retired
        with pytest.raises(jwt.PyJWKClientError, match="Unable to find a signing key"):
            verify(idp, old_token)
        verify(idp, new_token)


@pytest.mark.parametrize("alg", ["ES256", "EdDSA"])
def test_ec_and_eddsa_signing_keys(alg: str) -> None:
    with OidcProvider() as idp:
        idp.start(CLIENTS, make_jwks(make_jwk(f"{alg}-key", alg), make_jwk("rsa-key")))
        token = idp.token("tenant-b", "events:write")
        assert jwt.get_unverified_header(token) == {
            "alg": alg,
            "typ": "at+jwt",
            "kid": f"{alg}-key",
        }
        assert verify(idp, token, alg)["tenant_id"] == "ten_b"


def test_startup_failure_reports_the_servers_stderr() -> None:
    idp = OidcProvider()
    with pytest.raises(OidcProviderError, match=r"exited with code 1 before READY(?s:.*)jwks"):
        idp.start(CLIENTS, {"keys": [{"kty": "RSA", "kid": "broken"}]})
    assert idp.stop() is None
