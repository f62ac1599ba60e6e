"""WebhookSender (libcurl on the event loop) against real local HTTP servers."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import os
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pycurl
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from standardwebhooks import Webhook

from tidegate.destinations.base import Outcome
from tidegate.destinations.webhook import WebhookSender, _Transfer
from tidegate.model import Destination, DestinationId, TenantId
from tidegate.security.ssrf import SsrfPolicy

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
LOOPBACK = SsrfPolicy(["127.0.0.0/8"])


@dataclass
class Server:
    port: int
    seen: list[web.Request] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    answers: dict[str, web.Response] = field(default_factory=dict)
    delay_s: float = 0.0

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    state = Server(port=0)

    async def handler(request: web.Request) -> web.StreamResponse:
        state.seen.append(request)
        state.bodies.append(await request.read())
        if state.delay_s:
            await asyncio.sleep(state.delay_s)
        answer = state.answers.get(request.path)
        return answer if answer is not None else web.Response(status=204)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.port = runner.addresses[0][1]
    try:
        yield state
    finally:
        await runner.cleanup()


@pytest.fixture(params=[True, False], ids=["nested-epoll", "loop-watchers"])
async def sender(request: pytest.FixtureRequest) -> AsyncIterator[WebhookSender]:
    """A sender allowed to reach 127.0.0.0/8, closed after the test; each test runs
    with libcurl's sockets in the sender's own epoll set (Linux) and on the loop's
    watchers (elsewhere)."""
    sender = WebhookSender(LOOPBACK, default_timeout_s=5, nested_poll=request.param)
    try:
        yield sender
    finally:
        await sender.aclose()


def destination(url: str, timeout_s: float | None = None) -> Destination:
    return Destination(
        id=DestinationId("dst_1"),
        tenant_id=TenantId("ten_1"),
        name="hook",
        url=url,
        secret_ciphertext=b"",
        timeout_s=timeout_s,
    )


async def send(sender: WebhookSender, url: str, timeout_s: float | None = None) -> Outcome:
    return await sender.send(
        destination(url, timeout_s),
        secrets=[SECRET],
        webhook_id="msg_1",
        body=b'{"a":1}',
        content_type="application/json",
    )


async def test_a_signed_post_verifies_with_the_reference_library(
    server: Server, sender: WebhookSender
) -> None:
    outcome = await send(sender, server.url("/hook"))
    assert outcome.status_code == 204 and outcome.is_success
    again = await send(sender, server.url("/hook"))  # a pooled connection, reused
    assert again.status_code == 204
    request = server.seen[0]
    assert server.bodies[0] == b'{"a":1}'
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"].startswith("Tidegate-Webhooks/")
    assert "expect" not in request.headers  # no 100-continue round trip
    Webhook(SECRET).verify(server.bodies[0], dict(request.headers))


async def test_status_retry_after_and_redirects(server: Server, sender: WebhookSender) -> None:
    server.answers["/busy"] = web.Response(status=429, headers={"Retry-After": "7"})
    server.answers["/moved"] = web.Response(status=302, headers={"Location": "/hook"})
    busy = await send(sender, server.url("/busy"))
    moved = await send(sender, server.url("/moved"))
    assert busy.status_code == 429 and busy.retry_after_s == 7.0
    assert busy.error == "HTTP 429"
    assert moved.status_code == 302 and moved.error == "HTTP 302"
    assert [r.path for r in server.seen] == ["/busy", "/moved"]  # the redirect not followed


async def test_a_slow_endpoint_times_out(server: Server, sender: WebhookSender) -> None:
    server.delay_s = 2.0
    outcome = await send(sender, server.url("/slow"), timeout_s=0.3)
    assert outcome.status_code is None
    assert outcome.error == "timed out after 0.3s"
    assert 250 <= outcome.duration_ms < 1500


async def test_a_refused_connection_is_a_failed_attempt(
    unused_tcp_port: int, sender: WebhookSender
) -> None:
    outcome = await send(sender, f"http://127.0.0.1:{unused_tcp_port}/hook")
    assert outcome.status_code is None and not outcome.blocked
    assert outcome.error is not None and outcome.error.startswith("could not connect")


async def test_ip_literals_are_refused_before_any_request(server: Server) -> None:
    sender = WebhookSender(SsrfPolicy(), default_timeout_s=5)
    try:
        outcome = await send(sender, server.url("/hook"))
    finally:
        await sender.aclose()
    assert outcome.blocked and "loopback" in (outcome.error or "")
    assert server.seen == []


def pinned(sender: WebhookSender, policy: SsrfPolicy, entry: str) -> None:
    """A transfer whose libcurl resolves a name as `entry` says (HOST:PORT:ADDRESS, as
    `curl --resolve`): a public-looking name with a loopback address, with no DNS."""
    transfer = _Transfer(policy, [])
    transfer.curl.setopt(pycurl.RESOLVE, [entry])
    sender._idle.append(transfer)


@pytest.mark.parametrize("allowed", [False, True])
async def test_a_name_is_checked_at_connect_time(server: Server, allowed: bool) -> None:
    """A public-looking name that resolves to a loopback address: refused before any
    connection, or delivered when the allow-list covers the address."""
    policy = LOOPBACK if allowed else SsrfPolicy()
    sender = WebhookSender(policy, default_timeout_s=5)
    pinned(sender, policy, f"hooks.example.com:{server.port}:127.0.0.1")
    try:
        outcome = await send(sender, server.url("/named", host="hooks.example.com"))
    finally:
        await sender.aclose()
    if allowed:
        assert outcome.status_code == 204
        assert [r.path for r in server.seen] == ["/named"]
        assert server.seen[0].headers["host"] == f"hooks.example.com:{server.port}"
    else:
        assert outcome.blocked
        assert "127.0.0.1, a loopback address" in (outcome.error or "")
        assert server.seen == []


async def test_proxies_from_the_environment_are_not_used(
    server: Server, monkeypatch: pytest.MonkeyPatch, sender: WebhookSender
) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing listens on the discard port
    outcome = await send(sender, server.url("/direct"))
    assert outcome.status_code == 204


@pytest.mark.parametrize("nested", [True, False])
async def test_many_concurrent_attempts_all_complete(server: Server, nested: bool) -> None:
    sender = WebhookSender(LOOPBACK, default_timeout_s=5, limit=16, nested_poll=nested)
    try:
        outcomes = await asyncio.gather(*(send(sender, server.url(f"/c{i}")) for i in range(200)))
    finally:
        await sender.aclose()
    assert all(o.status_code == 204 for o in outcomes)
    assert sorted(r.path for r in server.seen) == sorted(f"/c{i}" for i in range(200))


async def test_a_cancelled_attempt_leaves_the_sender_usable(
    server: Server, sender: WebhookSender
) -> None:
    server.delay_s = 1.0
    task = asyncio.create_task(send(sender, server.url("/slow")))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    server.delay_s = 0.0
    outcome = await send(sender, server.url("/after"))
    assert outcome.status_code == 204


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that no CA signed, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.mark.parametrize("trusted", [False, True])
async def test_https_verifies_the_peer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trusted: bool
) -> None:
    """An endpoint whose certificate no trusted CA signed is a failed attempt, and
    nothing is sent to it; trusted through the system's CA settings (here
    SSL_CERT_FILE, which Python's default verify paths read), it is delivered."""
    cert, key = self_signed(tmp_path)
    if trusted:
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    sender = WebhookSender(LOOPBACK, default_timeout_s=5)
    try:
        outcome = await send(sender, f"https://127.0.0.1:{port}/tls")
    finally:
        await sender.aclose()
        await runner.cleanup()
    if trusted:
        assert outcome.status_code == 204
        assert seen == ["/tls"]
    else:
        assert outcome.status_code is None and not outcome.blocked
        assert outcome.error is not None and outcome.error.startswith("TLS")
        assert seen == []


async def test_a_long_answer_is_cut_short_with_its_status_kept(
    server: Server, sender: WebhookSender
) -> None:
    """Nothing reads a webhook's answer: past 64 KiB the transfer ends, the status kept."""
    server.answers["/long"] = web.Response(status=200, body=b"x" * (8 * 1024 * 1024))
    server.answers["/short"] = web.Response(status=500, body=b"y" * 1000)
    long = await send(sender, server.url("/long"))
    short = await send(sender, server.url("/short"))
    assert long.status_code == 200 and long.is_success
    assert short.status_code == 500 and short.error == "HTTP 500"


def peer_port(fd: int) -> int | None:
    """The remote port of the TCP socket `fd`, or None."""
    try:
        with socket.socket(fileno=os.dup(fd)) as sock:
            return int(sock.getpeername()[1])
    except OSError:
        return None


@dataclass
class RawServer:
    """HTTP/1.1 by hand, to control the connection: answers 204 and, while
    `close_after` is set, closes the connection after the answer."""

    port: int = 0
    close_after: bool = False
    connections: int = 0
    requests: int = 0
    open: list[asyncio.StreamWriter] = field(default_factory=list)


@pytest.fixture
async def raw_server() -> AsyncIterator[RawServer]:
    state = RawServer()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        state.open.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                state.requests += 1
                writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
                await writer.drain()
                if state.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        for writer in state.open:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_kept_alive_socket_stays_parked_in_the_epoll_set(raw_server: RawServer) -> None:
    sender = WebhookSender(LOOPBACK, default_timeout_s=5)
    url = f"http://127.0.0.1:{raw_server.port}/hook"
    try:
        for _ in range(5):
            assert (await send(sender, url)).status_code == 204
        assert raw_server.connections == 1 and raw_server.requests == 5
        assert not sender._wanted  # no transfer waits on a socket
        assert raw_server.port in {peer_port(fd) for fd in sender._in_set}  # parked
    finally:
        await sender.aclose()


async def test_a_parked_connection_closed_by_the_other_end_is_dropped_quietly(
    raw_server: RawServer,
) -> None:
    """The server closes an idle kept-alive connection: its parked socket turns readable
    once and leaves the set (no busy loop); the next attempt opens a new connection,
    often on the same descriptor number, which is registered anew."""
    sender = WebhookSender(LOOPBACK, default_timeout_s=5)
    url = f"http://127.0.0.1:{raw_server.port}/hook"
    wakes = 0
    on_ready = sender._on_ready

    def counted() -> None:
        nonlocal wakes
        wakes += 1
        on_ready()

    sender._on_ready = counted  # type: ignore[method-assign]
    try:
        for round_ in range(4):
            assert (await send(sender, url)).status_code == 204
            for writer in raw_server.open:
                writer.close()  # the server ends every idle connection
            raw_server.open.clear()
            await asyncio.sleep(0.2)
            watched = {peer_port(fd) for fd in sender._in_set}
            assert raw_server.port not in watched, f"round {round_}: closed, still watched"
        assert raw_server.connections == 4 and raw_server.requests == 4
        assert wakes < 40  # once or twice a round, not a spin
    finally:
        await sender.aclose()


async def test_connections_closed_after_each_answer_reuse_descriptor_numbers(
    raw_server: RawServer,
) -> None:
    """`Connection: close` style: libcurl closes each socket and opens a new one, and
    the kernel hands out the freed number again; every attempt still completes."""
    raw_server.close_after = True
    sender = WebhookSender(LOOPBACK, default_timeout_s=2)
    url = f"http://127.0.0.1:{raw_server.port}/hook"
    try:
        outcomes = [await send(sender, url) for _ in range(20)]
        outcomes += await asyncio.gather(*(send(sender, url) for _ in range(20)))
    finally:
        await sender.aclose()
    assert [o.status_code for o in outcomes] == [204] * 40
    assert raw_server.requests == 40
