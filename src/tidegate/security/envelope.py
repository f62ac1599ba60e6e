"""Envelope encryption at the append boundary: AES-256-GCM with per-tenant data keys.

Each tenant has numbered data keys (DEKs), stored wrapped by the KeyRing's master
key. The newest encrypts; any can decrypt, so rotation needs no downtime and no
rewrite. A ciphertext is

    0x01 | key version (4 bytes, big-endian) | nonce (12 bytes) | AES-GCM ciphertext+tag

with associated data binding it to its tenant and purpose, so a blob moved to
another tenant or another field does not decrypt. Blind indexes (HMAC-SHA256,
truncated) let the store match event names and messageIds without plaintext; their
key is derived from the tenant's first data key and never rotates.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import struct
import threading
import time
from collections.abc import Sequence
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tidegate.errors import DecryptionFailed
from tidegate.keys import KeyRing
from tidegate.model import TenantId
from tidegate.security.mac import HmacSha256

RELOAD_S = 60.0
_VERSION = 1
_HEADER = struct.Struct(">BI")
_NONCE_BYTES = 12
_NONCES_PER_REFILL = 4096
# Event names repeat (a tenant sends a few dozen kinds), so their indexes are kept: up to
# this many per tenant, each of a name up to _NAME_KEPT_CHARS long.
_NAMES_KEPT = 4096
_NAME_KEPT_CHARS = 256


class _NoncePool(threading.local):
    """Random 96-bit GCM nonces, drawn from the OS in 48 KiB refills.

    One getrandom() call per 4,096 nonces instead of one per event (it showed as 10%
    of ingest CPU), cut into nonces at refill so a take is one list pop. Per thread, so
    no two threads ever hand out the same bytes.
    """

    def __init__(self) -> None:
        self.pending: list[bytes] = []

    def take(self) -> bytes:
        pending = self.pending
        if not pending:
            block = os.urandom(_NONCE_BYTES * _NONCES_PER_REFILL)
            pending.extend(block[i : i + _NONCE_BYTES] for i in range(0, len(block), _NONCE_BYTES))
        return pending.pop()


_nonces = _NoncePool()
# A forked child must not hand out the nonces its parent has yet to use (same keys).
os.register_at_fork(after_in_child=lambda: _nonces.pending.clear())


class WrappedKey(Protocol):
    @property
    def version(self) -> int: ...
    @property
    def wrapped(self) -> bytes: ...


class DataKeyStore(Protocol):
    """The part of the store that keeps wrapped data keys."""

    async def data_keys(self, tenant_id: TenantId) -> Sequence[WrappedKey]:
        """Every wrapped key of the tenant, oldest first."""
        ...

    async def add_data_key(self, tenant_id: TenantId, wrapped: bytes, key_ring_id: str) -> None:
        """Store the next version; a concurrent add of the same version is ignored."""
        ...


class TenantCipher:
    """Encrypts and decrypts one tenant's data. Cheap to call: no I/O."""

    def __init__(self, tenant_id: TenantId, keys: dict[int, bytes]) -> None:
        self.tenant_id = tenant_id
        self._aeads = {version: AESGCM(key) for version, key in keys.items()}
        self._current = max(keys)
        # What every encryption under the newest key starts with, and its AEAD.
        self._header = _HEADER.pack(_VERSION, self._current)
        self._aead = self._aeads[self._current]
        index_key = HKDF(
            algorithm=SHA256(), length=32, salt=None, info=b"tidegate blind index"
        ).derive(keys[min(keys)])
        self._index_mac = HmacSha256(index_key)
        self._aad_prefix = tenant_id.encode() + b"\x00"
        self._name_indexes: dict[str, bytes] = {}

    def encrypt(self, plaintext: bytes, purpose: bytes) -> bytes:
        nonce = _nonces.take()
        body = self._aead.encrypt(nonce, plaintext, self._aad_prefix + purpose)
        return self._header + nonce + body

    def decrypt(self, blob: bytes, purpose: bytes) -> bytes:
        if len(blob) < _HEADER.size + 12 + 16:
            raise DecryptionFailed("ciphertext is truncated")
        fmt, version = _HEADER.unpack_from(blob)
        aead = self._aeads.get(version)
        if fmt != _VERSION or aead is None:
            raise DecryptionFailed(f"unknown ciphertext format {fmt} or key version {version}")
        nonce = blob[_HEADER.size : _HEADER.size + 12]
        try:
            return aead.decrypt(nonce, blob[_HEADER.size + 12 :], self._aad_prefix + purpose)
        except InvalidTag as exc:
            raise DecryptionFailed("ciphertext does not authenticate") from exc

    def has_version_of(self, blob: bytes) -> bool:
        """Whether this cipher holds the key version `blob` was sealed with."""
        return len(blob) >= _HEADER.size and _HEADER.unpack_from(blob)[1] in self._aeads

    def index(self, value: str) -> bytes:
        """A keyed, deterministic 16-byte digest for equality lookups: HMAC-SHA256 of
        `value` under the index key, truncated."""
        return self._index_mac.digest(value.encode())[:16]

    def name_index(self, name: str) -> bytes:
        """`index(name)` for an event name, remembered: the same few names come again
        and again, while messageIds (`index` itself) never repeat."""
        found = self._name_indexes.get(name)
        if found is None:
            found = self.index(name)
            if len(name) <= _NAME_KEPT_CHARS:
                if len(self._name_indexes) >= _NAMES_KEPT:
                    self._name_indexes.clear()
                self._name_indexes[name] = found
        return found


class Envelope:
    """Hands out TenantCiphers, creating a tenant's first data key on first use."""

    def __init__(self, key_ring: KeyRing, keys: DataKeyStore) -> None:
        self._key_ring = key_ring
        self._keys = keys
        self._ciphers: dict[TenantId, tuple[float, TenantCipher]] = {}
        self._lock = asyncio.Lock()

    async def cipher(self, tenant_id: TenantId) -> TenantCipher:
        """The tenant's cipher; reloaded every minute, so a rotation made by another
        process (the CLI) reaches new writes within `RELOAD_S` with no restart."""
        cached = self._ciphers.get(tenant_id)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        async with self._lock:
            cached = self._ciphers.get(tenant_id)
            if cached is not None and cached[0] > time.monotonic():
                return cached[1]
            cipher = await self._load(tenant_id)
            self._ciphers[tenant_id] = (time.monotonic() + RELOAD_S, cipher)
            return cipher

    async def decrypt(self, tenant_id: TenantId, blob: bytes, purpose: bytes) -> bytes:
        """Decrypt, reloading the tenant's keys once if `blob` uses a newer key version
        (another process rotated them)."""
        cipher = await self.cipher(tenant_id)
        if not cipher.has_version_of(blob):
            self.forget(tenant_id)
            cipher = await self.cipher(tenant_id)
        return cipher.decrypt(blob, purpose)

    async def rotate(self, tenant_id: TenantId) -> int:
        """Add a new data key; new writes use it, old data stays readable."""
        await self._keys.add_data_key(
            tenant_id,
            await self._key_ring.wrap(secrets.token_bytes(32), tenant_id),
            self._key_ring.key_id,
        )
        async with self._lock:
            self._ciphers.pop(tenant_id, None)
        return max(k.version for k in await self._keys.data_keys(tenant_id))

    def forget(self, tenant_id: TenantId) -> None:
        """Drop the cached keys (another process rotated them)."""
        self._ciphers.pop(tenant_id, None)

    async def _load(self, tenant_id: TenantId) -> TenantCipher:
        stored = await self._keys.data_keys(tenant_id)
        if not stored:
            wrapped = await self._key_ring.wrap(secrets.token_bytes(32), tenant_id)
            await self._keys.add_data_key(tenant_id, wrapped, self._key_ring.key_id)
            stored = await self._keys.data_keys(tenant_id)
        keys = {k.version: await self._key_ring.unwrap(k.wrapped, tenant_id) for k in stored}
        return TenantCipher(tenant_id, keys)
