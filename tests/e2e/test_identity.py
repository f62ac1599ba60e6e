"""OAuth 2.0 with a real OpenID provider: scopes, tenants, rotation, hostile tokens, audit."""

from __future__ import annotations

import base64
import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests

from tests.idp.provider import OidcProvider, ensure_installed, make_jwk, make_jwks
from tests.support import Receiver, Tidegate, wait_until

AUDIENCE = "https://api.tidegate.test"
TENANT_SCOPES = (
    "events:write events:read payload:read destinations:read destinations:write "
    "sources:write replay:execute audit:read usage:read"
)


class World:
    def __init__(self, tg: Tidegate, idp: OidcProvider, a: str, b: str, write_key: str) -> None:
        self.tg, self.idp, self.a, self.b, self.write_key = tg, idp, a, b, write_key

    def get(self, path: str, token: str, **params: Any) -> requests.Response:
        return requests.get(
            self.tg.base + path,
            params=params,
            headers={"authorization": f"Bearer {token}"},
            timeout=10,
        )

    def forge(
        self, claims: dict[str, Any], *, key: dict[str, Any] | None = None, **header: Any
    ) -> str:
        """A token signed with the provider's real private key (or `key`)."""
        jwk = key or self.idp.jwks["keys"][0]
        now = int(time.time())
        body = {
            "iss": self.idp.issuer,
            "aud": AUDIENCE,
            "sub": "forger",
            "client_id": "forger",
            "iat": now,
            "exp": now + 300,
            "scope": "events:read",
            "tenant_id": self.a,
            **claims,
        }
        headers = {"typ": "at+jwt", "kid": jwk["kid"], **header}
        return jwt.encode(
            body, jwt.PyJWK(jwk).key, algorithm=jwk.get("alg", "RS256"), headers=headers
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    ensure_installed()
    idp = OidcProvider()
    idp.start([], jwks=make_jwks(make_jwk("key-1")))
    data = tmp_path_factory.mktemp("identity") / "data"
    issuers = json.dumps([{"issuer": idp.issuer, "audience": AUDIENCE}])
    tg = Tidegate(data, extra_env={"TIDEGATE_OIDC_ISSUERS": issuers})
    a = tg.cli("tenants", "create", "tenant-a", "--region", "eu")["id"]
    b = tg.cli("tenants", "create", "tenant-b", "--region", "eu")["id"]
    write_key = tg.cli("sources", "create", "--tenant", a)["write_key"]
    idp.restart(
        clients=[
            {
                "client_id": "a-reader",
                "client_secret": "s1",
                "tenant_id": a,
                "scopes": "events:read",
            },
            {"client_id": "a-all", "client_secret": "s2", "tenant_id": a, "scopes": TENANT_SCOPES},
            {"client_id": "b-all", "client_secret": "s3", "tenant_id": b, "scopes": TENANT_SCOPES},
            {
                "client_id": "op-nomfa",
                "client_secret": "s4",
                "scopes": "tidegate:admin",
                "amr": ["pwd"],
            },
            {
                "client_id": "op-mfa",
                "client_secret": "s5",
                "scopes": "tidegate:admin",
                "amr": ["pwd", "mfa"],
            },
        ]
    )
    tg.start()
    yield World(tg, idp, a, b, write_key)
    tg.stop()
    idp.stop()


def _send(world: World, event: str = "Identity Test") -> str:
    r = requests.post(
        world.tg.base + "/v1/track",
        json={"userId": "u", "event": event},
        auth=(world.write_key, ""),
        timeout=10,
    )
    assert r.status_code == 200
    token = world.idp.token("a-all")
    rows = wait_until(lambda: world.get("/v1/events", token, name=event).json()["data"])
    return str(rows[0]["id"])


def test_each_scope_opens_only_its_endpoints(world: World) -> None:
    event_id = _send(world)
    reader = world.idp.token("a-reader", "events:read")
    assert world.get("/v1/events", reader).status_code == 200
    r = world.get(f"/v1/events/{event_id}", reader)  # the payload needs payload:read
    assert r.status_code == 403 and "payload:read" in r.json()["detail"]
    full = world.idp.token("a-all", "payload:read")
    assert world.get(f"/v1/events/{event_id}", full).json()["payload"]["event"] == "Identity Test"
    assert world.get("/v1/usage", full).status_code == 403


def test_another_tenants_token_gets_404(world: World) -> None:
    event_id = _send(world, "Isolation")
    other = world.idp.token("b-all")
    for path in (f"/v1/events/{event_id}", f"/v1/events/{event_id}/deliveries"):
        assert world.get(path, other).status_code == 404
    assert world.get("/v1/events", other).json()["data"] == []


def test_ingest_accepts_a_bearer_token_with_events_write(world: World) -> None:
    token = world.idp.token("a-all", "events:write")
    r = requests.post(
        world.tg.base + "/v1/track",
        json={"userId": "u", "event": "Bearer Ingest"},
        headers={"authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    reader = world.idp.token("a-reader")
    assert wait_until(lambda: world.get("/v1/events", reader, name="Bearer Ingest").json()["data"])
    no_write = world.idp.token("a-reader")
    r = requests.post(
        world.tg.base + "/v1/track",
        json={"userId": "u", "event": "x"},
        headers={"authorization": f"Bearer {no_write}"},
        timeout=10,
    )
    assert r.status_code == 403


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("expired", 401),
        ("not yet valid", 401),
        ("wrong audience", 401),
        ("wrong issuer", 401),
        ("alg none", 401),
        ("hs256 with public key", 401),
        ("forged under same kid", 401),
        ("no typ", 401),
        ("jku header", 401),
    ],
)
def test_hostile_tokens_are_refused(world: World, case: str, status: int) -> None:
    now = int(time.time())
    public = {k: v for k, v in world.idp.jwks["keys"][0].items() if k in ("kty", "n", "e", "kid")}
    if case == "expired":
        token = world.forge({"iat": now - 7200, "exp": now - 3600})
    elif case == "not yet valid":
        token = world.forge({"nbf": now + 3600})
    elif case == "wrong audience":
        token = world.forge({"aud": "https://elsewhere.test"})
    elif case == "wrong issuer":
        token = world.forge({"iss": "http://127.0.0.1:1"})
    elif case == "alg none":
        token = jwt.encode(
            {
                "iss": world.idp.issuer,
                "aud": AUDIENCE,
                "exp": now + 60,
                "iat": now,
                "scope": "events:read",
                "tenant_id": world.a,
            },
            None,
            algorithm="none",
            headers={"typ": "at+jwt"},
        )
    elif case == "hs256 with public key":
        secret = json.dumps(public, sort_keys=True).encode()
        head = base64.urlsafe_b64encode(
            json.dumps({"alg": "HS256", "typ": "at+jwt", "kid": public["kid"]}).encode()
        ).rstrip(b"=")
        body = base64.urlsafe_b64encode(
            json.dumps(
                {
                    "iss": world.idp.issuer,
                    "aud": AUDIENCE,
                    "exp": now + 60,
                    "iat": now,
                    "scope": "events:read",
                    "tenant_id": world.a,
                }
            ).encode()
        ).rstrip(b"=")
        import hashlib
        import hmac

        sig = base64.urlsafe_b64encode(
            hmac.new(secret, head + b"." + body, hashlib.sha256).digest()
        ).rstrip(b"=")
        token = (head + b"." + body + b"." + sig).decode()
    elif case == "forged under same kid":
        impostor = make_jwk(world.idp.jwks["keys"][0]["kid"])
        token = world.forge({}, key=impostor)
    elif case == "no typ":
        token = world.forge({}, typ="JWT")
    else:
        token = world.forge({}, jku="http://127.0.0.1:1/evil-jwks.json")
        # jku is ignored: the token is otherwise valid and signed by the real key
        assert world.get("/v1/events", token).status_code == 200
        return
    r = world.get("/v1/events", token)
    assert r.status_code == status, (case, r.text)
    assert r.headers["content-type"].startswith("application/problem+json")


def test_oversized_header_is_431(world: World) -> None:
    r = requests.get(
        world.tg.base + "/v1/events",
        headers={"authorization": "Bearer " + "a" * 20_000},
        timeout=10,
    )
    assert r.status_code == 431


def test_key_rotation_keeps_old_tokens_valid(world: World) -> None:
    old_token = world.idp.token("a-reader")
    assert world.get("/v1/events", old_token).status_code == 200
    new_key = make_jwk("key-2")
    world.idp.restart(jwks=make_jwks(new_key, *world.idp.jwks["keys"]))
    new_token = world.idp.token("a-reader")
    assert jwt.get_unverified_header(new_token)["kid"] == "key-2"
    wait_until(lambda: world.get("/v1/events", new_token).status_code == 200, timeout=15)
    assert world.get("/v1/events", old_token).status_code == 200


def test_operator_endpoints_need_mfa(world: World) -> None:
    no_mfa = world.idp.token("op-nomfa")
    r = world.get("/v1/admin/tenants", no_mfa)
    assert r.status_code == 403 and "MFA" in r.json()["detail"]
    with_mfa = world.idp.token("op-mfa")
    names = {t["name"] for t in world.get("/v1/admin/tenants", with_mfa).json()}
    assert {"tenant-a", "tenant-b"} <= names
    tenant_token = world.idp.token("a-all")
    assert world.get("/v1/admin/tenants", tenant_token).status_code == 403


def test_reads_and_failures_are_audited_and_the_chain_verifies(world: World) -> None:
    event_id = _send(world, "Audited")
    token = world.idp.token("a-all", "payload:read")
    world.get(f"/v1/events/{event_id}", token)
    world.get("/v1/events", "not-a-token")
    auditor = world.idp.token("a-all", "audit:read")
    records = world.get("/v1/audit", auditor, limit=200).json()["data"]
    reads = [
        r for r in records if r["action"] == "event.payload.read" and r["resource"] == event_id
    ]
    assert reads and reads[0]["actor"] == "a-all" and reads[0]["request_id"]
    operator = world.idp.token("op-mfa")
    failures = [
        r
        for r in world.get("/v1/admin/audit", operator, limit=500).json()["data"]
        if r["action"] == "auth.failed"
    ]
    assert failures and failures[0]["outcome"] == "denied"
    assert world.get("/v1/audit", world.idp.token("b-all", "audit:read")).json()[
        "data"
    ] == [] or all(
        r["tenant_id"] == world.b
        for r in world.get("/v1/audit", world.idp.token("b-all", "audit:read")).json()["data"]
    )
    assert world.tg.cli("audit", "verify")["ok"] is True


def test_tampering_is_detected(tmp_path: Path) -> None:
    tg = Tidegate(tmp_path / "data")
    tenant = tg.cli("tenants", "create", "t", "--region", "eu")["id"]
    tg.cli("sources", "create", "--tenant", tenant)
    tg.cli("apikeys", "create", "--tenant", tenant)
    store = sqlite3.connect(tg.data_dir / "store.audit.db")  # the audit chain's own file
    # Build a real chain through the store, then tamper with one record.
    import asyncio

    from tidegate.security.audit import AuditEntry
    from tidegate.store import open_store

    async def write() -> None:
        s = open_store(f"sqlite:///{tg.data_dir / 'store.db'}")
        entry = AuditEntry(
            at_ms=int(time.time() * 1000),
            tenant_id=tenant,
            actor="a",
            client_id=None,
            source_ip=None,
            action="event.read",
            resource=str(uuid.uuid4()),
            outcome="success",
            request_id=None,
        )
        await s.audit.append_audit([entry, entry, entry])
        await s.aclose()

    asyncio.run(write())
    assert tg.cli("audit", "verify")["ok"] is True
    with store:
        store.execute("UPDATE audit SET actor = 'someone-else' WHERE seq = 2")
    done = tg.cli("audit", "verify", check=False)
    assert done.returncode == 1
    assert json.loads(done.stdout)["first_broken_seq"] == 2
    with store:
        store.execute("UPDATE audit SET actor = 'a' WHERE seq = 2")
        store.execute("DELETE FROM audit WHERE seq = 2")
    done = tg.cli("audit", "verify", check=False)
    assert done.returncode == 1 and json.loads(done.stdout)["first_broken_seq"] == 3
    store.close()


def test_audit_retention_below_90_days_is_refused(tmp_path: Path, receiver: Receiver) -> None:
    del receiver
    tg = Tidegate(tmp_path / "data", extra_env={"TIDEGATE_AUDIT_RETENTION_DAYS": "30"})
    done = tg.cli("tenants", "list", check=False)
    assert done.returncode == 2 and "TIDEGATE_AUDIT_RETENTION_DAYS" in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_changes_are_audited(tmp_path: Path) -> None:
    tg = Tidegate(tmp_path / "data")
    tenant = tg.cli("tenants", "create", "audited", "--region", "eu")["id"]
    source = tg.cli("sources", "create", "--tenant", tenant)["id"]
    tg.cli("keys", "rotate", "--tenant", tenant)
    actions = {(r["action"], r["resource"]) for r in tg.cli("audit", "list", "--tenant", tenant)}
    assert ("tenant.create", tenant) in actions
    assert ("source.create", source) in actions
    assert ("keys.rotate", "data key v2") in actions
    assert all(r["actor"].startswith("cli:") for r in tg.cli("audit", "list"))
    assert tg.cli("audit", "verify")["ok"] is True


def test_no_data_is_returned_when_the_audit_record_cannot_be_written(
    tmp_path: Path, receiver: Receiver
) -> None:
    """The audit write is part of the request: it fails, the read fails, no payload leaks."""
    tg = Tidegate(tmp_path / "data").start()
    try:
        t = tg.tenant()
        marker = f"secret-{uuid.uuid4().hex}"
        t.track("Withheld", properties={"note": marker})
        event_id = wait_until(lambda: t.get("/v1/events").json()["data"])[0]["id"]
        with sqlite3.connect(tg.data_dir / "store.audit.db") as store:
            store.execute(
                "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit"
                " BEGIN SELECT RAISE(ABORT, 'audit storage is failing'); END"
            )
        r = t.get(f"/v1/events/{event_id}")
        assert r.status_code == 503, r.text
        assert marker not in r.text
        with sqlite3.connect(tg.data_dir / "store.audit.db") as store:
            store.execute("DROP TRIGGER refuse_audit")
        assert t.get(f"/v1/events/{event_id}").json()["payload"]["properties"]["note"] == marker
    finally:
        tg.stop()
