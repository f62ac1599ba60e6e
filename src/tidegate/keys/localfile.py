"""LocalFileKeyRing: a 256-bit master key in a 0600 file, for the embedded default."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tidegate.errors import ConfigError, DecryptionFailed

_MAGIC = b"TGK1"


class LocalFileKeyRing:
    """Wraps data keys with AES-256-GCM under a master key read from `path`.

    The file is created on first use with mode 0600; an existing file readable by
    group or others is refused, as ssh refuses a private key with loose permissions.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._master = _load_or_create(path)
        self._aead = AESGCM(self._master)
        self._key_id = "local:" + AESGCM(self._master).encrypt(b"\0" * 12, b"", b"id")[:8].hex()

    @classmethod
    def from_url(cls, url: str) -> LocalFileKeyRing:
        return cls(Path(url.removeprefix("file://")))

    @property
    def key_id(self) -> str:
        return self._key_id

    async def wrap(self, data_key: bytes, context: str) -> bytes:
        nonce = secrets.token_bytes(12)
        return _MAGIC + nonce + self._aead.encrypt(nonce, data_key, context.encode())

    async def unwrap(self, wrapped: bytes, context: str) -> bytes:
        if not wrapped.startswith(_MAGIC) or len(wrapped) < len(_MAGIC) + 12 + 16:
            raise DecryptionFailed("wrapped data key has an unknown format")
        nonce, body = wrapped[4:16], wrapped[16:]
        try:
            return self._aead.decrypt(nonce, body, context.encode())
        except InvalidTag as exc:
            raise DecryptionFailed("data key does not unwrap under this master key") from exc

    async def aclose(self) -> None:
        return None


def _load_or_create(path: Path) -> bytes:
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise ConfigError(
                f"TIDEGATE_KEY_FILE: {path} is accessible by group or others "
                f"(mode {mode:o}); run: chmod 600 {path}"
            )
        key = path.read_bytes()
        if len(key) != 32:
            raise ConfigError(f"TIDEGATE_KEY_FILE: {path} does not hold a 32-byte key")
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    return key
