"""A development token issuer for the embedded default, where there is no identity provider.

It signs RFC 9068 access tokens (ES256) with a local key kept in the data directory
(0600). It is on only when TIDEGATE_DEV_TOKENS is set (`serve --demo` sets it), and
Tidegate refuses to start with it alongside production settings (PostgreSQL, Kafka or
a real identity provider): see Settings.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

ISSUER = "urn:tidegate:dev"
AUDIENCE = "tidegate"


class DevIssuer:
    def __init__(self, data_dir: Path) -> None:
        self._path = data_dir / "dev-issuer.jwk"
        if self._path.exists():
            self._jwk = json.loads(self._path.read_text())
        else:
            key = ec.generate_private_key(ec.SECP256R1())
            jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key))
            jwk.update(kid=f"dev-{secrets.token_hex(4)}", alg="ES256", use="sig")
            data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump(jwk, handle)
            self._jwk = jwk
        self._private = jwt.PyJWK(self._jwk)

    @property
    def public_jwk(self) -> dict[str, str]:
        return {k: v for k, v in self._jwk.items() if k != "d"}

    def mint(
        self,
        *,
        tenant_id: str | None,
        scopes: list[str],
        subject: str = "dev-user",
        mfa: bool = False,
        ttl_s: int = 3600,
    ) -> str:
        now = int(time.time())
        claims: dict[str, object] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": subject,
            "client_id": "tidegate-dev",
            "iat": now,
            "nbf": now,
            "exp": now + ttl_s,
            "jti": secrets.token_hex(8),
            "scope": " ".join(scopes),
        }
        if tenant_id:
            claims["tenant_id"] = tenant_id
        if mfa:
            claims["amr"] = ["pwd", "mfa"]
        return jwt.encode(
            claims,
            self._private.key,
            algorithm="ES256",
            headers={"typ": "at+jwt", "kid": self._jwk["kid"]},
        )
