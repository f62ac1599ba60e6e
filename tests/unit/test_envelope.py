"""Envelope encryption: per-tenant keys, binding to tenant and purpose, rotation, key file."""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tidegate.errors import ConfigError, DecryptionFailed
from tidegate.keys.localfile import LocalFileKeyRing
from tidegate.model import TenantId
from tidegate.security.envelope import Envelope, TenantCipher
from tidegate.store.sqlite import SqliteStore


@pytest.fixture
async def envelope(tmp_path: Path):  # type: ignore[no-untyped-def]
    store = SqliteStore(tmp_path / "store.db")
    yield Envelope(LocalFileKeyRing(tmp_path / "master.key"), store.tenants)
    await store.aclose()


def test_key_file_is_created_0600(tmp_path: Path) -> None:
    LocalFileKeyRing(tmp_path / "k")
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    LocalFileKeyRing(tmp_path / "k")
    os.chmod(tmp_path / "k", 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        LocalFileKeyRing(tmp_path / "k")


async def test_round_trip_and_no_plaintext_in_ciphertext(envelope: Envelope) -> None:
    cipher = await envelope.cipher(TenantId("t1"))
    blob = cipher.encrypt(b"marker-123", b"evt")
    assert b"marker-123" not in blob
    assert cipher.decrypt(blob, b"evt") == b"marker-123"


async def test_ciphertext_is_bound_to_tenant_and_purpose(envelope: Envelope) -> None:
    a = await envelope.cipher(TenantId("a"))
    b = await envelope.cipher(TenantId("b"))
    blob = a.encrypt(b"secret", b"evt-1")
    with pytest.raises(DecryptionFailed):
        b.decrypt(blob, b"evt-1")
    with pytest.raises(DecryptionFailed):
        a.decrypt(blob, b"evt-2")


async def test_rotation_keeps_old_data_readable_and_index_stable(envelope: Envelope) -> None:
    tenant = TenantId("t")
    before = await envelope.cipher(tenant)
    old_blob = before.encrypt(b"old", b"p")
    old_index = before.index("Order Completed")
    assert await envelope.rotate(tenant) == 2
    after = await envelope.cipher(tenant)
    assert after.decrypt(old_blob, b"p") == b"old"
    assert after.encrypt(b"new", b"p")[1:5] == (2).to_bytes(4, "big")
    assert after.index("Order Completed") == old_index


async def test_wrong_master_key_cannot_unwrap(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "store.db")
    try:
        await Envelope(LocalFileKeyRing(tmp_path / "k1"), store.tenants).cipher(TenantId("t"))
        with pytest.raises(DecryptionFailed):
            await Envelope(LocalFileKeyRing(tmp_path / "k2"), store.tenants).cipher(TenantId("t"))
    finally:
        await store.aclose()


async def test_a_process_with_stale_keys_reloads_on_a_newer_version(tmp_path: Path) -> None:
    """Another process rotated the keys: decrypt() notices the new version and reloads."""
    store = SqliteStore(tmp_path / "store.db")
    ring = LocalFileKeyRing(tmp_path / "k")
    try:
        stale, fresh = Envelope(ring, store.tenants), Envelope(ring, store.tenants)
        tenant = TenantId("t")
        await stale.cipher(tenant)
        await fresh.rotate(tenant)
        blob = (await fresh.cipher(tenant)).encrypt(b"after rotation", b"p")
        assert await stale.decrypt(tenant, blob, b"p") == b"after rotation"
    finally:
        await store.aclose()


async def test_nonces_never_repeat(envelope: Envelope) -> None:
    """Pooled nonces: 10,000 encryptions, 10,000 distinct nonces (past a refill)."""
    cipher = await envelope.cipher(TenantId("t"))
    nonces = {cipher.encrypt(b"x", b"p")[5:17] for _ in range(10_000)}
    assert len(nonces) == 10_000


def test_blind_index_is_hmac_sha256_of_the_derived_key() -> None:
    """The index is HMAC-SHA256 under a key derived from the first data key, truncated to
    16 bytes: stored indexes stay valid however the digest is computed."""
    data_key = bytes(range(32))
    index_key = HKDF(algorithm=SHA256(), length=32, salt=None, info=b"tidegate blind index").derive(
        data_key
    )
    cipher = TenantCipher(TenantId("t"), {1: data_key})
    for value in ("Order Completed", "", "é" * 100, "x" * 5000):
        expected = hmac.new(index_key, value.encode(), hashlib.sha256).digest()[:16]
        assert cipher.index(value) == expected


def test_name_index_is_the_index_remembered() -> None:
    """Event names' indexes are memoised: the same bytes as `index`, first time or not,
    for short and long names, and the memo stays bounded."""
    cipher = TenantCipher(TenantId("t"), {1: bytes(range(32))})
    for value in ("Order Completed", "Order Completed", "", "x" * 5000, "x" * 5000):
        assert cipher.name_index(value) == cipher.index(value)
    for i in range(10_000):
        assert cipher.name_index(f"event {i}") == cipher.index(f"event {i}")
    assert len(cipher._name_indexes) <= 4096


def test_a_forked_child_draws_its_own_nonces() -> None:
    """A child forked after the parent took nonces from its pool must not hand out the
    ones the parent still holds: same key, same nonce would break AES-GCM."""
    cipher = TenantCipher(TenantId("t"), {1: bytes(range(32))})
    cipher.encrypt(b"x", b"p")  # the pool is filled
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        os.write(write, b"".join(cipher.encrypt(b"x", b"p")[5:17] for _ in range(100)))
        os._exit(0)
    os.close(write)
    child = b""
    while chunk := os.read(read, 4096):
        child += chunk
    os.close(read)
    os.waitpid(pid, 0)
    parent = b"".join(cipher.encrypt(b"x", b"p")[5:17] for _ in range(100))
    assert len(child) == 1200
    child_nonces = {child[i : i + 12] for i in range(0, 1200, 12)}
    parent_nonces = {parent[i : i + 12] for i in range(0, 1200, 12)}
    assert not child_nonces & parent_nonces
