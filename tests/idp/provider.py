"""A real OpenID Connect provider (panva/oidc-provider on Node.js) for resource-server tests.

`OidcProvider` runs `tests/idp/server.mjs` on 127.0.0.1 and gets real access tokens from it
with the client_credentials grant. Tokens are RFC 9068 JWTs (header ``typ: at+jwt``) signed
with the first key of the provider's JWKS and verifiable through OIDC discovery
(``<issuer>/.well-known/openid-configuration`` -> ``jwks_uri``)::

    idp = OidcProvider()
    idp.start([{"client_id": "tenant-a", "client_secret": "s", "tenant_id": "ten_a",
                "scopes": "events:read payload:read", "amr": ["pwd", "mfa"]}])
    token = idp.token("tenant-a", "events:read")
    ...
    idp.restart(jwks=make_jwks(make_jwk("new"), *idp.jwks["keys"]))  # key rotation
    idp.stop()

Signing keys are generated here in Python (`make_jwk`, with `cryptography` through PyJWT);
`node tests/idp/make_jwks.mjs [kid] [alg]` prints the same kind of JWKS from the shell.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import requests
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

IDP_DIR = Path(__file__).resolve().parent
SERVER = IDP_DIR / "server.mjs"
DEFAULT_AUDIENCE = "https://api.tidegate.test"
Client = Mapping[str, Any]


class OidcProviderError(RuntimeError):
    """The provider could not be installed, started or stopped: the reason is the message."""


class TokenRequestError(RuntimeError):
    """The token endpoint refused a request; `status` and `body` hold its answer."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"token endpoint answered {status}: {body}")
        self.status = status
        self.body = body
        self.error = body.get("error")


def ensure_installed() -> None:
    """Install the pinned npm packages (`npm ci`) when `tests/idp/node_modules` lacks them."""
    if (IDP_DIR / "node_modules" / "oidc-provider" / "package.json").is_file():
        return
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise OidcProviderError("node and npm are needed for the test OIDC provider (tests/idp)")
    done = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"],
        cwd=IDP_DIR,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise OidcProviderError(
            f"`npm ci` in {IDP_DIR} failed with exit code {done.returncode}:\n"
            f"{done.stdout}\n{done.stderr}"
        )


def make_jwk(kid: str | None = None, alg: str = "RS256") -> dict[str, Any]:
    """A new private signing JWK: RS256 (RSA 2048), ES256 (P-256) or EdDSA (Ed25519)."""
    if alg == "RS256":
        jwk = RSAAlgorithm.to_jwk(
            rsa.generate_private_key(public_exponent=65537, key_size=2048), as_dict=True
        )
    elif alg == "ES256":
        jwk = ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()), as_dict=True)
    elif alg == "EdDSA":
        jwk = OKPAlgorithm.to_jwk(ed25519.Ed25519PrivateKey.generate(), as_dict=True)
    else:
        raise ValueError(f"unsupported alg {alg!r}: use RS256, ES256 or EdDSA")
    return {**jwk, "kid": kid or uuid.uuid4().hex, "alg": alg, "use": "sig"}


def make_jwks(*keys: Mapping[str, Any]) -> dict[str, Any]:
    """A private JWK Set of `keys`, in order: the first one signs access tokens."""
    return {"keys": [dict(k) for k in keys]}


def public_jwk(jwk: Mapping[str, Any]) -> dict[str, Any]:
    """The public half of a private JWK (what the provider publishes at jwks_uri)."""
    private = {"d", "p", "q", "dp", "dq", "qi", "oth"}
    return {k: v for k, v in jwk.items() if k not in private}


class OidcProvider:
    """One `server.mjs` process. Not thread-safe; start/stop from one fixture."""

    def __init__(self, startup_timeout: float = 30.0) -> None:
        self.startup_timeout = startup_timeout
        self.issuer = ""
        self.port = 0
        self.audience = DEFAULT_AUDIENCE
        self.jwks: dict[str, Any] = {}
        self.clients: list[dict[str, Any]] = []
        self.token_ttl = 300
        self.startup_seconds = 0.0
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
        self._discovery: dict[str, Any] | None = None
        self._session = requests.Session()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(
        self,
        clients: Iterable[Client],
        jwks: Mapping[str, Any] | None = None,
        audience: str = DEFAULT_AUDIENCE,
        *,
        token_ttl: int = 300,
        port: int = 0,
    ) -> None:
        """Start the provider; return once it prints READY.

        `jwks` is a private JWK Set (default: one new RS256 key). `port` 0 lets the server
        pick a free port; the issuer is ``http://127.0.0.1:<port>``.
        """
        if self._proc is not None:
            raise OidcProviderError("the provider is already running; stop() or restart() it")
        ensure_installed()
        self.clients = [dict(c) for c in clients]
        self.jwks = dict(jwks) if jwks is not None else make_jwks(make_jwk())
        self.audience = audience
        self.token_ttl = token_ttl
        self._dir = Path(tempfile.mkdtemp(prefix="tidegate-idp-"))
        (self._dir / "jwks.json").write_text(json.dumps(self.jwks))
        (self._dir / "clients.json").write_text(json.dumps(self.clients))
        stdout = (self._dir / "stdout.log").open("wb")
        stderr = (self._dir / "stderr.log").open("wb")
        env = {**os.environ, "AUDIENCE": audience, "ACCESS_TOKEN_TTL": str(token_ttl)}
        env.pop("DEBUG", None)  # oidc-provider's debug output would flood stderr
        began = time.monotonic()
        with stdout, stderr:
            self._proc = subprocess.Popen(
                [
                    shutil.which("node") or "node",
                    str(SERVER),
                    "--port",
                    str(port),
                    "--jwks",
                    str(self._dir / "jwks.json"),
                    "--clients",
                    str(self._dir / "clients.json"),
                ],
                cwd=IDP_DIR,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                env=env,
            )
        try:
            self.issuer = self._wait_ready(began)
        except BaseException:
            self._kill()
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
            raise
        self.startup_seconds = time.monotonic() - began
        self.port = int(self.issuer.rsplit(":", 1)[1])
        self._discovery = None

    def stop(self) -> int | None:
        """SIGTERM the server and wait for it; its exit code (None when it was not running)."""
        proc, self._proc = self._proc, None
        code: int | None = None
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise OidcProviderError(
                    f"provider ignored SIGTERM for 10s:\n{self.logs()}"
                ) from None
        self._session.close()
        self._session = requests.Session()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        return code

    def restart(
        self, jwks: Mapping[str, Any] | None = None, clients: Iterable[Client] | None = None
    ) -> None:
        """Stop and start again on the same port (so the same issuer), with new keys/clients.

        Key rotation: ``restart(jwks=make_jwks(new_key, *idp.jwks["keys"]))`` signs with
        the new key and keeps publishing the old public key.
        """
        port = self.port
        if not port:
            raise OidcProviderError("restart() needs a provider that was started")
        self.stop()
        self.start(
            clients if clients is not None else self.clients,
            jwks if jwks is not None else self.jwks,
            self.audience,
            token_ttl=self.token_ttl,
            port=port,
        )

    def __enter__(self) -> OidcProvider:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- HTTP --------------------------------------------------------------------------------

    def discovery(self) -> dict[str, Any]:
        """The provider's OpenID Provider Metadata (cached until the next start)."""
        if self._discovery is None:
            r = self._session.get(f"{self.issuer}/.well-known/openid-configuration", timeout=10)
            r.raise_for_status()
            self._discovery = r.json()
        return self._discovery

    @property
    def jwks_uri(self) -> str:
        return str(self.discovery()["jwks_uri"])

    @property
    def token_endpoint(self) -> str:
        return str(self.discovery()["token_endpoint"])

    @property
    def kid(self) -> str:
        """The kid that signs new access tokens (the JWKS's first key)."""
        return str(self.jwks["keys"][0]["kid"])

    def token_response(
        self,
        client_id: str,
        scope: str | None = None,
        *,
        client_secret: str | None = None,
        resource: str | None = None,
    ) -> requests.Response:
        """The raw answer to a client_credentials request (basic client auth).

        `scope` None asks for every scope the client is configured with; "" sends no
        `scope` (the token then has no scope claim). `resource` defaults to the audience.
        """
        client = next((c for c in self.clients if c["client_id"] == client_id), None)
        if client_secret is None:
            if client is None:
                raise KeyError(f"no client {client_id!r} configured")
            client_secret = str(client["client_secret"])
        if scope is None:
            scope = str((client or {}).get("scopes", ""))
        form = {"grant_type": "client_credentials", "resource": resource or self.audience}
        if scope:
            form["scope"] = scope
        return self._session.post(
            self.token_endpoint, data=form, auth=(client_id, client_secret), timeout=10
        )

    def token(
        self,
        client_id: str,
        scope: str | None = None,
        *,
        client_secret: str | None = None,
        resource: str | None = None,
    ) -> str:
        """A fresh access token (JWT); raises `TokenRequestError` when refused."""
        r = self.token_response(client_id, scope, client_secret=client_secret, resource=resource)
        try:
            body = r.json()
        except ValueError:
            body = {"raw": r.text}
        if r.status_code != 200:
            raise TokenRequestError(r.status_code, body)
        return str(body["access_token"])

    # -- internals ---------------------------------------------------------------------------

    def logs(self) -> str:
        """The server's stdout and stderr so far."""
        if self._dir is None:
            return ""
        out = (self._dir / "stdout.log").read_text(errors="replace")
        err = (self._dir / "stderr.log").read_text(errors="replace")
        return f"--- stdout ---\n{out}--- stderr ---\n{err}"

    def _wait_ready(self, began: float) -> str:
        assert self._proc is not None and self._dir is not None
        stdout = self._dir / "stdout.log"
        while True:
            for line in stdout.read_text(errors="replace").splitlines():
                if line.startswith("READY "):
                    return line.split(" ", 1)[1].strip()
            if self._proc.poll() is not None:
                raise OidcProviderError(
                    f"provider exited with code {self._proc.returncode} before READY:\n"
                    f"{self.logs()}"
                )
            if time.monotonic() - began > self.startup_timeout:
                raise OidcProviderError(
                    f"provider not READY within {self.startup_timeout}s:\n{self.logs()}"
                )
            time.sleep(0.02)

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()


__all__ = [
    "DEFAULT_AUDIENCE",
    "OidcProvider",
    "OidcProviderError",
    "TokenRequestError",
    "ensure_installed",
    "make_jwk",
    "make_jwks",
    "public_jwk",
]
